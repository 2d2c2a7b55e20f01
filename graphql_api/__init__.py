"""The consumer-facing GraphQL API (Strawberry on Starlette) and the file-content HTTP routes.

A thin transport: resolvers authenticate, call a core service, and turn domain records and errors into
GraphQL types. No business rule lives here.
"""
