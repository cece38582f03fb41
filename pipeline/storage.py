"""Where training runs keep their checkpoints: `distributed.storage`, a folder or the URI of a
filesystem that pyarrow knows (s3://bucket/prefix, gs://..., hdfs://...), as Ray Train takes it.

On a cluster every node writes and reads checkpoints there, so it must be shared: an object
store or a network filesystem. An S3-compatible store other than AWS (MinIO, Ceph, a local test
server) is named by the standard AWS variables in every node's environment: AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.layout import repo_root


def is_uri(location: str) -> bool:
    return "://" in location


def storage_path(configured: str) -> str:
    """A URI as it is; a folder made absolute (relative ones from the repository root), as Ray needs."""
    if is_uri(configured):
        return configured.rstrip("/")
    path = Path(configured)
    return str(path if path.is_absolute() else (repo_root() / path).resolve())


def join(location: str, *parts: str) -> str:
    """`location` (a URI or an absolute folder) extended by `parts`, '/'-separated as both are."""
    return "/".join([location.rstrip("/"), *parts])


class StateFile:
    """One torch state file at a location (folder or URI): the local launcher's checkpoint.
    A save goes to a partial file first and is then renamed, so a kill mid-save keeps the last
    complete state."""

    def __init__(self, location: str):
        from pyarrow import fs

        try:
            self.fs, self.path = fs.FileSystem.from_uri(location)
        except Exception as error:  # an unknown scheme, a bucket without credentials, ...
            raise UserError(f"distributed.storage: cannot open {location} ({error})") from None

    def exists(self) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self.path).type == fs.FileType.File

    def load(self, device: torch.device | str = "cpu") -> dict | None:
        if not self.exists():
            return None
        with self.fs.open_input_file(self.path) as handle:
            return torch.load(io.BytesIO(handle.read()), map_location=device, weights_only=True)

    def save(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        partial = self.path + ".partial"
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(partial) as handle:
            handle.write(buffer.getvalue())
        self.fs.move(partial, self.path)


def fetch_folder(location: str, path: str, destination: Path) -> bool:
    """Copy the folder `path` of the filesystem of `location` (as Ray Train names a checkpoint:
    without the URI's scheme) into `destination`; False when it is not there."""
    from pyarrow import fs

    filesystem, _ = fs.FileSystem.from_uri(location)
    if filesystem.get_file_info(path).type != fs.FileType.Directory:
        return False
    destination.mkdir(parents=True, exist_ok=True)
    fs.copy_files(path, str(destination), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
    return True
