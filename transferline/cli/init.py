"""`transferline init DIR`: a new project for a team's own task.

The project holds what is the team's (params.yaml, dvc.yaml, the data, git
and DVC) and none of the code: its stages run the installed package
(transferline/project.py explains how DVC still sees a code change). The
data lands where params.yaml's defaults look (data/external/<modality>) and
DVC tracks it: a local folder or file is copied and `dvc add`ed, a URL is
`dvc import-url`ed and a path in another DVC repository `dvc import`ed, so
`dvc update` and `transferline check` see a change at the source.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import typer

from transferline.cli.common import console

GITIGNORE = "# transferline's local state: MLflow DB and artifacts, Prefect home, downloads\n.transferline/\n" \
            "__pycache__/\n.venv/\n"
WEIGHTS_README = ("Put external pretrained weights here (safetensors, or a torch state dict) and set\n"
                  "a weights file in `finetune.image.candidates` (text: a model folder in `finetune.text.candidates`) in params.yaml.\n"
                  "DVC tracks this folder as a dependency of the finetune stage.\n")

DEMO_README = ("Your images, one sub-folder per class (data/external/image/<class>/<image>); then set\n"
               "`ingest.image.target: folder` in params.yaml and `dvc add data/external/image`.\n")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _is_url(source: str) -> bool:
    return "://" in source


def _check_image_folder(folder: Path, option: str) -> None:
    from transferline.errors import StageError
    from transferline.image.files import folder_files  # numpy only: no torch

    if not folder.is_dir():
        _fail(f"{option} {folder}: no such folder; give a folder with one sub-folder per class "
              f"({folder}/<class>/<image>)")
    try:
        classes, _, _ = folder_files(folder)
    except StageError:
        classes = []
    if len(classes) < 2:
        _fail(f"{option} {folder}: {len(classes)} class sub-folder(s); put each class's images in its own "
              f"sub-folder ({folder}/<class>/<image>), at least 2 classes")


def _is_text_file(name: str) -> bool:
    from transferline.text.files import FORMATS  # the suffixes ingest reads

    return Path(name).suffix.lower() in FORMATS


def _check_text_file(name: str, option: str, path: Path | None = None) -> None:
    from transferline.text.files import KNOWN

    if not _is_text_file(name):
        _fail(f"{option} {name}: not a {KNOWN} file; convert it to one of those")
    if path is not None and not path.is_file():
        _fail(f"{option} {path}: no such file; give a {KNOWN} file with a text and a label column")


def _source(image_folder: str | None, text_file: str | None, from_dvc: str | None,
            path: str | None) -> tuple[str, str | None, str]:
    """(modality, the source or None for the built-in demo, how to bring it: copy | import-url | import)."""
    given = [o for o, v in (("--image-folder", image_folder), ("--text-file", text_file), ("--from-dvc", from_dvc))
             if v]
    if len(given) > 1:
        _fail(f"{' and '.join(given)} given; choose one data source (or none for the built-in demo)")
    if from_dvc:
        if not path:
            _fail(f"--from-dvc {from_dvc}: add --path PATH, the folder or file inside that DVC repository")
        modality = "text" if _is_text_file(path) else "image"
        return modality, path, "import"
    if path:
        _fail("--path is the path inside the repository given with --from-dvc REPO; add --from-dvc")
    if image_folder:
        if _is_url(image_folder):
            return "image", image_folder, "import-url"
        _check_image_folder(Path(image_folder), "--image-folder")
        return "image", image_folder, "copy"
    if text_file:
        if _is_url(text_file):
            _check_text_file(text_file, "--text-file")
            return "text", text_file, "import-url"
        _check_text_file(text_file, "--text-file", Path(text_file))
        return "text", text_file, "copy"
    return "image", None, "demo"


def _run(cwd: Path, *cmd: str) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()[-1500:]}")


def _bring_data(root: Path, modality: str, source: str, how: str, repo: str | None) -> dict[str, str]:
    """Put the data under data/external/<modality> with DVC tracking it; the params that point at it."""
    dvc = (sys.executable, "-m", "dvc")
    folder = Path("data/external") / modality
    name = Path(source.rstrip("/")).name
    dest = folder if modality == "image" else folder / name
    if modality == "text":
        (root / folder).mkdir(parents=True, exist_ok=True)
    if how == "copy":
        if modality == "image":
            from transferline.image.files import os_file

            shutil.copytree(source, root / dest, ignore=lambda _, names: [n for n in names if os_file(n)])
        else:
            shutil.copy(source, root / dest)
        _run(root, *dvc, "add", "--quiet", str(folder))
    elif how == "import-url":
        _run(root, *dvc, "import-url", "--quiet", source, str(dest))
    else:  # another DVC repository: a git URL or a local path (made absolute: the command runs in root)
        repo_arg = repo if _is_url(repo or "") or not Path(repo or "").exists() else str(Path(repo).resolve())
        _run(root, *dvc, "import", "--quiet", repo_arg, source, "-o", str(dest))
    if modality == "image":
        _check_image_folder(root / dest, "the imported folder")
        from transferline.image.files import split_folders

        if splits := split_folders(root / dest):
            console.print(f"{source} is laid out by split ({', '.join(splits)}): its split is kept (its test images "
                          "are the test set; split.image.val_per_class and labels_per_class images per class are "
                          "drawn from its validation and training images)")
        return {"ingest.image.target": "folder", "ingest.image.folder": str(dest)}
    values = {"ingest.text.source": "file", "ingest.text.file": str(dest)}
    from transferline.text.data import TextDataError
    from transferline.text.files import read_table

    try:
        columns = list(read_table(root / dest).columns)
    except TextDataError:  # the run's pre-flight names what is wrong with the file
        columns = []
    if "split" in columns:  # as an image folder laid out by split: the file's split is kept
        values["ingest.text.split_column"] = "split"
        console.print(f"{source} has a 'split' column: its train, val and test rows stay on their side "
                      "(ingest.text.split_column: split)")
    return values


def _write_files(root: Path, modality: str) -> None:
    from transferline.project import project_dvc_yaml, template, write_code

    shutil.copy(template("params.yaml"), root / "params.yaml")
    shutil.copy(template(".dvcignore"), root / ".dvcignore")
    (root / "dvc.yaml").write_text(project_dvc_yaml())
    (root / ".gitignore").write_text(GITIGNORE)
    (root / "data/external/weights").mkdir(parents=True)
    (root / "data/external/weights/README.md").write_text(WEIGHTS_README)
    write_code(root)


def _fit_split(root: Path) -> dict[str, tuple[int, int]]:
    """Lower the split's label budget where the defaults do not fit the data just brought (the
    run's pre-flight would refuse them): {key: (default, value)} for what changed."""
    import importlib

    from transferline.config import load_params
    from transferline.config.edit import set_values

    params = load_params(root / "params.yaml")
    preflight = importlib.import_module(f"transferline.{params.modality}.preflight")
    fitted = preflight.fitted_split(params, root)
    set_values(root / "params.yaml", fitted)
    return {key: (getattr(params.values.split, key.rsplit(".", 1)[1]), value) for key, value in fitted.items()}


def _commit(root: Path) -> bool:
    """Commit the new project; False leaves it staged (git does not know who the user is)."""
    _run(root, "git", "add", "-A")
    done = subprocess.run(["git", "commit", "-q", "-m", "transferline init"], cwd=root, capture_output=True, text=True)
    return done.returncode == 0


def init(
    directory: Path = typer.Argument(..., help="The new project's folder (absent or empty)."),
    image_folder: str = typer.Option(None, help="Your images, one sub-folder per class: a local folder "
                                     "(copied, `dvc add`) or a URL s3://, gs://, https:// (`dvc import-url`)."),
    text_file: str = typer.Option(None, help="Your texts: a .csv/.tsv/.jsonl/.parquet file with text and label "
                                  "columns, local (copied) or a URL (`dvc import-url`)."),
    from_dvc: str = typer.Option(None, "--from-dvc", metavar="REPO", help="Import the data from another DVC "
                                 "repository (git URL or local path) with `dvc import`; needs --path."),
    path: str = typer.Option(None, help="With --from-dvc: the folder (images) or .csv/.tsv/.jsonl/.parquet file "
                             "(text) inside that repository."),
    remote: str = typer.Option(None, help="DVC remote (default: a sibling folder ../DIR-dvc-remote)."),
) -> None:
    """Create a project for your own data: params.yaml, dvc.yaml, git and DVC with a remote, the data tracked.

    The stages run the installed transferline package; the project holds your
    values and data. Where the default label budget does not fit your smallest
    class, params.yaml gets one that does. Without a data option it runs the
    built-in demo. Then:
    cd DIR && transferline run
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        _fail(f"{directory} exists and is not an empty folder; give a new folder (transferline init NEW_DIR)")
    modality, source, how = _source(image_folder, text_file, from_dvc, path)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    try:
        _create(root, modality, source, how, from_dvc, remote)
    except (RuntimeError, OSError, typer.Exit) as err:
        # nothing half made stays behind: the folder was new or empty
        shutil.rmtree(root) if created else [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in root.iterdir()]
        if isinstance(err, typer.Exit):
            raise
        _fail(f"init {directory}: {err}")


def _create(root: Path, modality: str, source: str | None, how: str, repo: str | None, remote: str | None) -> None:
    from transferline.config.edit import set_values

    dvc = (sys.executable, "-m", "dvc")
    _run(root, "git", "init", "-q")
    _run(root, *dvc, "init", "-q")
    _run(root, *dvc, "config", "core.analytics", "false")
    # relative to the project, as in this repository: the project and its remote move together
    _run(root, *dvc, "remote", "add", "-d", "local", remote or f"../{root.name}-dvc-remote")
    _write_files(root, modality)
    values: dict[str, str] = {"modality": modality}
    if source is not None:
        values.update(_bring_data(root, modality, source, how, repo))
    else:  # the built-in demo: ingest still lists the folder your own images would go to
        (root / "data/external/image").mkdir(parents=True)
        (root / "data/external/image/README.md").write_text(DEMO_README)
    set_values(root / "params.yaml", values)
    fitted = _fit_split(root) if source is not None else {}
    committed = _commit(root)
    what = {"copy": "copied and tracked with `dvc add`", "import-url": "imported with `dvc import-url`",
            "import": "imported with `dvc import`", "demo": "none: the built-in demo data"}[how]
    console.print(f"created {root} ({modality}); data: {what}")
    for key, (default, value) in fitted.items():
        console.print(f"set {key}: {value} in params.yaml (the default {default} does not fit your smallest class)")
    if not committed:
        console.print("not committed (git does not know who you are: git config user.email); the files are staged")
    console.print(f"next: cd {root} && transferline run")
