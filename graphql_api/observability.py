"""A schema extension that times every GraphQL operation into the service's metrics.

Operations are labelled by type and by their root fields (bounded by the schema), never by the
client-chosen operation name, so the number of series stays small.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from graphql import FieldNode, OperationDefinitionNode
from strawberry.extensions import SchemaExtension

from graphql_api.context import Context


class OperationMetrics(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        context = self.execution_context.context
        if not isinstance(context, Context):
            return
        kind, fields = "unknown", "-"
        document = self.execution_context.graphql_document
        if self.execution_context.pre_execution_errors:
            kind, fields = "invalid", "-"  # names a client made up must not become label values
        elif document is not None:
            ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            if len(ops) == 1:
                kind = ops[0].operation.value
                names = {s.name.value for s in ops[0].selection_set.selections if isinstance(s, FieldNode)}
                fields = ",".join(sorted(names)) or "-"
        elapsed = time.perf_counter() - started
        context.services.metrics.api_latency.labels(kind, fields).observe(elapsed)
