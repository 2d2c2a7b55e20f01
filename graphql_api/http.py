"""File content over plain HTTP: signed-URL downloads (with Range) and streaming uploads.

``GET /files/{id}/content`` serves ``File.downloadUrl``; ``PUT /files/{id}/content`` receives the bytes of
a ``createUpload``. Both are authorised by the URL's signature alone, like a presigned storage URL.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from backends.storage.base import ObjectNotFoundError, StorageError
from core import errors as domain
from core.files import RangeNotSatisfiableError
from core.services import Services

STATUS = {
    domain.NotFoundError: 404,
    RangeNotSatisfiableError: 416,
    domain.PayloadTooLargeError: 413,
    domain.QuotaExceededError: 413,  # the consumer's stored bytes: this body does not fit
    domain.ValidationError: 400,
    domain.ConflictError: 409,
    domain.UnavailableError: 503,
}


def error_response(e: domain.DomainError) -> JSONResponse:
    status = next((code for kind, code in STATUS.items() if isinstance(e, kind)), 400)
    return JSONResponse({"error": {"code": e.code, "message": e.message}}, status_code=status)


def content_disposition(name: str) -> str:
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


def file_routes(services: Services) -> list[Route]:
    files = services.files

    async def download(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        q = request.query_params
        try:
            dl = await files.open_download(
                file_id, q.get("expires"), q.get("signature"), request.headers.get("range")
            )
            await services.storage.stat(dl.file.storage_key)  # fail with 404 before the headers go out
        except RangeNotSatisfiableError as e:
            resp = error_response(e)
            resp.headers["Content-Range"] = f"bytes */{e.size}"
            return resp
        except domain.DomainError as e:
            return error_response(e)
        except ObjectNotFoundError:
            return error_response(domain.NotFoundError("file", file_id))
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Length": str(dl.length),
            "Content-Disposition": content_disposition(dl.file.name),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",  # consumer content is never rendered as what it claims
        }
        if dl.file.sha256:
            headers["ETag"] = f'"{dl.file.sha256}"'
        partial = request.headers.get("range") is not None and (dl.start, dl.length) != (0, dl.file.size)
        if partial:
            headers["Content-Range"] = f"bytes {dl.start}-{dl.start + dl.length - 1}/{dl.file.size}"
        return StreamingResponse(
            dl.chunks, status_code=206 if partial else 200, headers=headers, media_type=dl.file.content_type
        )

    async def upload(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        q = request.query_params
        try:
            record = await files.receive_upload(
                file_id, q.get("expires"), q.get("signature"), request.stream()
            )
        except domain.DomainError as e:
            return error_response(e)
        except StorageError:
            return error_response(domain.UnavailableError("storage failed"))
        return JSONResponse({"id": record.id, "size": record.size, "sha256": record.sha256}, status_code=201)

    return [
        Route("/files/{file_id}/content", download, methods=["GET", "HEAD"]),
        Route("/files/{file_id}/content", upload, methods=["PUT"]),
    ]
