"""The model zoo: trained weights committed with the repository, each described in
``zoo/metafile.yml`` (method, architecture, training budget, data and Q_init hashes, commit,
device, test scores, sha256 of the file). A zoo file has the format of ``models/<id>.pt`` and a
content-addressed name, ``<run id>-<sha256[:8]>.pt``, so new weights never reuse an old name."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import yaml

from pipeline.config import require
from pipeline.io import DataFileError, atomic_path, file_sha256

ZOO = Path("zoo")
METAFILE = ZOO / "metafile.yml"
HEADER = "# The model zoo: weights of converged long runs (python -m pipeline.long_run score <id>).\n"


def read_metafile(path: Path = METAFILE) -> list[dict]:
    """The zoo entries ([] when there is no metafile); a malformed file is named."""
    if not path.is_file():
        return []
    try:
        entries = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as exc:
        raise DataFileError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from exc
    require(isinstance(entries, list) and all(isinstance(e, dict) for e in entries), str(path),
            type(entries).__name__, "a list of zoo entries (mappings)")
    return entries


def add_weights(source: Path, run_id: str, entry: Mapping, zoo: Path = ZOO) -> dict:
    """Copy ``source`` into the zoo as ``<run_id>-<sha256[:8]>.pt`` and record ``entry`` (plus
    file, sha256 and size) in the metafile, replacing an older entry of the same run."""
    digest = file_sha256(source)
    target = zoo / f"{run_id}-{digest[:8]}.pt"
    zoo.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_bytes(Path(source).read_bytes())
    full = {"id": run_id, **entry, "file": target.as_posix(), "sha256": digest,
            "size_mb": round(target.stat().st_size / 2**20, 2)}
    metafile = zoo / METAFILE.name
    entries = [e for e in read_metafile(metafile) if e.get("id") != run_id] + [full]
    with atomic_path(metafile) as tmp:
        tmp.write_text(HEADER + yaml.safe_dump(entries, sort_keys=False))
    return full


def verified_entry(path: str | Path, metafile: Path = METAFILE) -> dict:
    """The metafile entry of the zoo file ``path`` after checking its sha256; a DataFileError
    names the file when it is missing, unknown to the metafile or altered."""
    path = Path(path)
    entries = {Path(str(e.get("file", ""))).as_posix(): e for e in read_metafile(metafile)}
    if not path.is_file():
        raise DataFileError(f"{path}: zoo weights not found (the zoo holds: {', '.join(entries) or 'nothing'})")
    entry = entries.get(path.as_posix())
    if entry is None:
        raise DataFileError(f"{path}: not an entry of {metafile} (the zoo holds: {', '.join(entries) or 'nothing'})")
    if file_sha256(path) != entry.get("sha256"):
        raise DataFileError(f"{path}: its sha256 differs from the one in {metafile} (altered or truncated)")
    return entry
