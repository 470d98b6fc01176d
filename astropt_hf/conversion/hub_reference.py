"""Where the checkpoint to convert lives: a local file, a file inside a local folder, or a file in a hub
repository (e.g. `Smith42/astroPT_v2.0` + `astropt/095M/ckpt.pt`), fetched with `huggingface_hub`.

Hub downloads go through `hf_hub_download`, so they use and fill the ordinary hub cache (`HF_HUB_CACHE`,
`HF_HOME` or `cache_dir`) and respect `HF_HUB_OFFLINE=1`: offline, a file already in the cache is used and
anything else is an error naming the repository and the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# "owner/name": what the hub accepts as a repository id (one slash, no path components).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class CheckpointReferenceError(ValueError):
    """A checkpoint reference that names no readable file (the message names the repository and file)."""


@dataclass(frozen=True)
class CheckpointSource:
    """A resolved checkpoint: the local `path` and, for hub files, where it came from."""

    path: Path
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None  # the commit the file was read at (hub files)

    @property
    def description(self) -> str:
        """A public name for reports and cards: `repo/file@commit` for hub files, else the file's name."""
        if self.repo_id is None:
            return self.path.name
        return f"{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def _snapshot_commit(path: Path) -> str | None:
    """The commit of a file the hub client put in `.../snapshots/<commit>/...`."""
    parts = path.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        return parts[parts.index("snapshots") + 1]
    return None


def _download(repo_id: str, filename: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}: {filename}" + (f" at revision {revision}" if revision else "")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise CheckpointReferenceError(
            f"{where}: not in the local hub cache and {why}; download it once online, or point HF_HUB_CACHE "
            "(or cache_dir) at a cache that holds it"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointReferenceError(f"{where}: no such hub repository (or it is private or gated: log in, and accept its terms)") from None
    except RevisionNotFoundError:
        raise CheckpointReferenceError(f"{where}: the repository has no such revision") from None
    except EntryNotFoundError:
        raise CheckpointReferenceError(f"{where}: the repository has no such file") from None
    except HFValidationError as error:
        raise CheckpointReferenceError(f"{where}: not a valid hub reference ({' '.join(str(error).split())})") from None
    except OSError as error:  # network failures (huggingface_hub's HTTP errors are OSErrors too)
        raise CheckpointReferenceError(f"{where}: download failed ({' '.join(str(error).split())})") from None


def resolve_checkpoint_source(
    checkpoint: str | Path,
    checkpoint_file: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> CheckpointSource:
    """Like `resolve_checkpoint`, keeping the repository, file and commit of hub files."""
    local = Path(checkpoint).expanduser()
    if checkpoint_file is None:
        if local.exists() or not _REPO_ID.match(str(checkpoint)):
            if revision is not None:
                raise CheckpointReferenceError(f"{checkpoint}: a revision only goes with a hub repository")
            return CheckpointSource(local)  # missing files are reported by the loader, naming the file
        raise CheckpointReferenceError(
            f"{checkpoint}: not a local file; as a hub repository it needs checkpoint_file, the file inside it "
            "(e.g. --checkpoint_file astropt/095M/ckpt.pt)"
        )
    if local.is_dir():
        return CheckpointSource(local / checkpoint_file)  # a local clone or snapshot of the repository
    if local.exists():
        raise CheckpointReferenceError(
            f"{checkpoint}: is a file; checkpoint_file={checkpoint_file!r} only goes with a hub repository or a folder"
        )
    if not _REPO_ID.match(str(checkpoint)):
        raise CheckpointReferenceError(
            f"{checkpoint}: {checkpoint_file}: neither a local folder nor a hub repository id ('owner/name')"
        )
    path = _download(str(checkpoint), checkpoint_file, revision, cache_dir)
    return CheckpointSource(path, str(checkpoint), checkpoint_file, _snapshot_commit(path) or revision)


def resolve_checkpoint(
    checkpoint: str | Path,
    checkpoint_file: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """The local path of the checkpoint to convert.

    `checkpoint` is a local file (used as it is), a local folder (with `checkpoint_file`, the file inside
    it), or a hub repository id such as `Smith42/astroPT_v2.0` (with `checkpoint_file`, e.g.
    `astropt/095M/ckpt.pt`, and optionally a `revision`: branch, tag or commit), which is fetched into, or
    read from, the hub cache (`cache_dir`, else `HF_HUB_CACHE` / `HF_HOME`).

    Raises:
        CheckpointReferenceError: (a `ValueError`) the reference names no file: unknown repository, file or
            revision, not cached while offline, or a repository id without `checkpoint_file`.
    """
    return resolve_checkpoint_source(checkpoint, checkpoint_file, revision, cache_dir).path
