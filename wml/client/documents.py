"""The GraphQL documents the client sends, in one place (the schema they must match is schema.graphql)."""

from __future__ import annotations

ERROR = "... on Error { message code }"
FILE_FIELDS = "id name size sha256 contentType origin createdAt expiresAt"
JOB_FIELDS = (
    "id assetId consumerId state reason message exitCode parameters createdAt updatedAt startedAt finishedAt"
    " logTail name description tags { key value } commands"
    f" inputs {{ slot fileId }} outputs {{ {FILE_FIELDS} downloadUrl }} log {{ {FILE_FIELDS} downloadUrl }}"
)
JOB_ROW = "id assetId consumerId state reason exitCode createdAt finishedAt"
GRANT_FIELDS = (
    "id consumerId assetId state createdAt expiresAt transferProcessId callbackState callbackAttempts"
    " callbackError deprovisionedAt"
)

UPLOAD_FILE = (
    "mutation($file: Upload!, $name: String) { uploadFile(file: $file, name: $name) {"
    f" __typename ... on File {{ {FILE_FIELDS} }} {ERROR} }} }}"
)
CREATE_UPLOAD = (
    "mutation($input: CreateUploadInput!) { createUpload(input: $input) {"
    f" __typename ... on UploadTicket {{ fileId uploadUrl method expiresAt }} {ERROR} }} }}"
)
COMPLETE_UPLOAD = (
    "mutation($id: ID!) { completeUpload(fileId: $id) {"
    f" __typename ... on File {{ {FILE_FIELDS} }} {ERROR} }} }}"
)
FILES = (
    "query($first: Int!, $after: String) { files(first: $first, after: $after) {"
    f" nodes {{ {FILE_FIELDS} job {{ id }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
)
FILE = f"query($id: ID!) {{ file(id: $id) {{ {FILE_FIELDS} downloadUrl }} }}"
DELETE_FILE = (
    f"mutation($id: ID!) {{ deleteFile(id: $id) {{ __typename ... on DeletedFile {{ id }} {ERROR} }} }}"
)

CREATE_JOB = (
    "mutation($input: CreateJobInput!) { createJob(input: $input) {"
    f" __typename ... on Job {{ id assetId state createdAt name tags {{ key value }} }} {ERROR}"
    " ... on ValidationError { field } } }"
)
JOB = f"query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"
JOBS = (
    "query($first: Int!, $after: String, $state: JobState) {"
    " jobs(first: $first, after: $after, state: $state) {"
    f" nodes {{ {JOB_ROW} }} pageInfo {{ hasNextPage endCursor }} }} }}"
)
CANCEL_JOB = (
    "mutation($id: ID!) { cancelJob(id: $id) {"
    f" __typename ... on Job {{ id assetId state reason }} {ERROR} }} }}"
)

CONSUMERS = "query { consumers { id name createdAt } }"
GRANTS = (
    "query($consumerId: ID, $state: GrantState) { grants(consumerId: $consumerId, state: $state) {"
    f" {GRANT_FIELDS} }} }}"
)
CREATE_CONSUMER = (
    "mutation($input: CreateConsumerInput!) { createConsumer(input: $input) { __typename"
    " ... on CreatedConsumer { consumer { id name createdAt }"
    f" tokens {{ token grant {{ {GRANT_FIELDS} }} }} }} {ERROR} }} }}"
)
REVOKE_CONSUMER = (
    "mutation($id: ID!) { revokeConsumer(id: $id) { __typename"
    f" ... on RevokedConsumer {{ consumer {{ id name }} grants {{ {GRANT_FIELDS} }} }} {ERROR} }} }}"
)

JOB_LOGS = "subscription($id: ID!, $follow: Boolean!) { jobLogs(jobId: $id, follow: $follow) { seq text } }"
