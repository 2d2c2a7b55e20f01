"""Reuse the parsed and validated document of a query text the schema has already accepted.

Clients send the same few query texts over and over; parsing and validating them again each time was
most of the server's CPU per request. Validation depends only on the document, the schema and the
schema's validation rules (depth, aliases, the specified rules), all fixed for one schema, and parsing
only on the text and the token limit, also fixed: so one cache per schema, keyed on the query text, is
exact. Only documents that parsed and validated without error are kept, so a refused query is checked
again every time and its errors never outlive its request; the cache is a bounded LRU and skips very
long texts, so unique queries cannot grow memory.

Strawberry's ``ParserCache`` and ``ValidationCache`` now hit too (the validation rules are made once per
schema), and are as fast: in the same run (bench/revisions.py, ``query`` and ``create`` workloads, 10 and
8 rounds) they gave server CPU per request ratios of 0.98 and 0.99. They stay out because they keep
every text whatever its length: after 256 unique 256 KiB queries they held 128.6 MiB, this cache 0.2 MiB.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from graphql import DocumentNode
from strawberry.extensions import SchemaExtension

DEFAULT_SIZE = 256
MAX_CACHED_QUERY = 16 * 1024  # characters; longer texts are parsed and validated every time


class DocumentCache:
    """A bounded LRU of query text -> a document that parsed and validated under one schema."""

    def __init__(self, size: int = DEFAULT_SIZE, max_query_length: int = MAX_CACHED_QUERY) -> None:
        self.size = size
        self.max_query_length = max_query_length
        self._documents: OrderedDict[str, DocumentNode] = OrderedDict()

    def __len__(self) -> int:
        return len(self._documents)

    def get(self, query: str) -> DocumentNode | None:
        document = self._documents.get(query)
        if document is not None:
            self._documents.move_to_end(query)
        return document

    def put(self, query: str, document: DocumentNode) -> None:
        if len(query) > self.max_query_length or self.size <= 0:
            return
        self._documents[query] = document
        self._documents.move_to_end(query)
        while len(self._documents) > self.size:
            self._documents.popitem(last=False)


class CachedDocuments(SchemaExtension):
    """Serve a known query text's document without parsing or validating it again.

    Made per request (pass ``lambda: CachedDocuments(cache)``); the cache itself is the schema's.
    """

    def __init__(self, cache: DocumentCache) -> None:
        self.cache = cache
        self.hit = False

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is None and context.query:
            document = self.cache.get(context.query)
            if document is not None:
                context.graphql_document = document
                self.hit = True
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if self.hit:
            context.pre_execution_errors = []  # Strawberry validates only while this is None
        yield
        if self.hit or context.query is None or context.graphql_document is None:
            return
        if context.pre_execution_errors == []:
            self.cache.put(context.query, context.graphql_document)
