"""A plain file server with Range support, standing in for the internet in transfer tests:
`python _fileserver.py FOLDER HOST PORT` serves FOLDER's files at /files/NAME (no key)."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route


class _Big(FileResponse):
    chunk_size = 1 << 20


def main() -> None:
    folder, host, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    files = {p.name: p for p in folder.iterdir() if p.is_file()}

    async def serve(request: Request) -> Response:
        path = files.get(request.path_params["name"])
        return _Big(path) if path else Response(status_code=404)

    async def health(request: Request) -> Response:
        return Response("ok")

    app = Starlette(
        routes=[
            Route("/files/{name}", serve, methods=["GET", "HEAD"]),
            Route("/health", health),
        ]
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
