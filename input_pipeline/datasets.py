"""Data sources by name: TFDS catalogue datasets (ArrayRecord), ``digits`` and synthetic tasks."""

from __future__ import annotations

import sys
from typing import Any

from input_pipeline import digits, docstrings, synthetic_seq2seq


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not prepared in the data directory (and cannot be downloaded here)."""


def _build_name(name: str, builder: Any) -> str:
    """What ``tfds build`` must be given to prepare exactly ``builder``: ``name/config`` (and
    ``:version`` when ``name`` pins one). A bare ``wmt14_translate`` would build every config,
    ``cs-en``, ``hi-en`` and ``ru-en`` included, which need files downloaded by hand."""
    build = builder.name
    if getattr(builder, "builder_config", None) is not None:
        # Also when the name has no config: tfds.builder then reads the default one.
        build += f"/{builder.builder_config.name}"
    if ":" in name:
        build += f":{builder.version}"
    return build


def _manual_download_instructions(builder: Any) -> str | None:
    """What must be downloaded by hand before ``tfds build`` can prepare ``builder``'s config,
    or None. ``MANUAL_DOWNLOAD_INSTRUCTIONS`` is per builder class; WMT's says only that "some
    of the wmt configs" need one, and its configs list which sub-corpora do (``de-en`` none,
    ``cs-en`` CzEng): those are read instead. TFDS has no per-config field in general."""
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    wmt = sys.modules.get("tensorflow_datasets.translate.wmt")
    if not instructions or wmt is None or not isinstance(builder, wmt.WmtTranslate):
        return instructions
    try:
        source_language = builder.builder_config.language_pair[0]
        lines = []
        for corpus in sorted({c for names in builder.subsets.values() for c in names}):
            files = wmt.DATASET_MAP[corpus].get_manual_dl_files(source_language)
            if files:
                urls = wmt.DATASET_MAP[corpus].get_url(source_language)
                urls = [urls] if isinstance(urls, str) else urls
                lines.append(f"{corpus}: {', '.join(files)} (from {', '.join(urls)})")
    except (AttributeError, KeyError, TypeError):  # TFDS internals changed: say what it says
        return instructions
    return "\n".join(lines) or None


def _not_found(name: str, split: str, data_dir: str | None, builder: Any) -> DatasetNotFoundError:
    """``builder``: the unprepared dataset. Its manual-download instructions, when its config
    needs any (ImageNet's archives need a registration, so ``tfds build`` alone cannot fetch
    them), are repeated in the message."""
    where = data_dir or digits.default_data_dir()
    build = _build_name(name, builder)
    # tfds build writes <data_dir>/<name>/<config>/<version>: the config's folder is copied,
    # so that other configs already in the target's <name> folder stay.
    folder = build.split(":")[0]
    manual_instructions = _manual_download_instructions(builder)
    manual = ""
    if manual_instructions:
        manual = (f"  # {build} needs files downloaded by hand first, into "
                  "/some/manual_dir:\n" + "".join(
                      f"  #   {line.strip()}\n" for line in manual_instructions.splitlines()
                      if line.strip()))
    return DatasetNotFoundError(
        f"dataset {name!r} (split {split!r}) is not prepared in data_dir={where!r} and this "
        "machine does not download data at run time. On a connected machine run:\n"
        f"  pip install -e '.[prepare]'   # TensorFlow is needed to prepare most datasets\n"
        f"{manual}"
        f"  tfds build {build} --file_format=array_record --data_dir=/some/dir"
        f"{' --manual_dir=/some/manual_dir' if manual else ''}\n"
        f"then copy /some/dir/{folder} to {where}/{folder} (or pass "
        f"--config.dataset.data_dir=<the copied parent>). Cause: FileNotFoundError: "
        f"{builder.data_dir}")


def import_builder_module(name: str) -> bool:
    """Imports the TFDS module that defines ``name`` when TFDS did not register it itself.

    Without TensorFlow, TFDS skips whole catalogue packages whose ``__init__`` imports a
    TensorFlow-only dataset (``translate/`` does), although most of their builders need no
    TensorFlow. Modules are looked up by the name's first word (``wmt14_translate`` ->
    ``translate/wmt14.py``). Returns whether a module was imported.
    """
    import importlib
    import pathlib

    import tensorflow_datasets as tfds

    stem = name.split("/")[0].split(":")[0]
    root = pathlib.Path(tfds.__file__).parent
    for candidate in (stem, stem.split("_")[0]):
        for path in sorted(root.glob(f"*/{candidate}.py")):
            module = f"tensorflow_datasets.{path.parent.name}.{path.stem}"
            try:
                importlib.import_module(module)
            except ImportError:
                continue
            return True
    return False


def get_source(name: str, split: str, data_dir: str | None = None, **kwargs: Any) -> Any:
    """A random-access source (``__len__``, ``__getitem__``) for grain.

    - ``"digits"``: scikit-learn's digits, prepared locally on first use.
    - ``"synthetic/<task>"``: ``Seq2SeqTaskSource(task, split, **kwargs)``.
    - any other name: ``tfds.data_source(name, split=split, data_dir=data_dir)``, which must
      already be prepared as ArrayRecord; otherwise ``DatasetNotFoundError`` says how.
      ``split`` is any TFDS split expression (``"train[:10%]"``, ``"train+test"``).
    """
    if name == "stdlib_docstrings":
        return docstrings.DocstringSentences(split, **kwargs)
    if name.startswith("synthetic/"):
        return synthetic_seq2seq.Seq2SeqTaskSource(name.split("/", 1)[1], split, **kwargs)
    if kwargs:
        raise ValueError(f"dataset {name!r} takes no source_kwargs; got {sorted(kwargs)}")
    if name == "digits":
        data_dir = digits.prepare_digits(data_dir)
    import tensorflow_datasets as tfds

    not_registered = tfds.core.registered.DatasetNotFoundError

    def make_builder():
        try:
            return tfds.builder(name, data_dir=data_dir, file_format="array_record")
        except not_registered:
            raise
        except (ValueError, AssertionError) as error:
            # A known dataset with a config or version it does not have
            # ("wmt14_translate/xx-yy", "cifar10:9.9.9"): TFDS's message lists the valid ones.
            raise ValueError(f"config.dataset.name={name!r}: {error}") from error

    builder = unknown = None
    try:
        builder = make_builder()
    except not_registered as error:
        unknown = error
    if builder is None and import_builder_module(name):
        # The module found by the name's first word may define other datasets only
        # ("mnist_typo" imports mnist.py, "cifar_100" cifar.py): still not in the catalogue.
        try:
            builder = make_builder()
        except not_registered as error:
            unknown = error
    if builder is None:
        raise ValueError(
            f"config.dataset.name={name!r} is not in the TFDS catalogue; expected a TFDS name "
            "(such as 'cifar10' or 'wmt14_translate/de-en'), 'digits', 'stdlib_docstrings' or "
            f"'synthetic/<task>'. TFDS: {unknown}") from unknown
    # Checked before tfds.data_source, which would otherwise try to prepare the dataset.
    if not builder.is_prepared():
        raise _not_found(name, split, data_dir, builder)
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise DatasetNotFoundError(
            f"dataset {name!r} in {builder.data_dir} is stored as {builder.info.file_format}; "
            "grain needs random access: rebuild it with --file_format=array_record")
    # TFDS parses the split expression ("train[:10%]+test", ...) and reads nothing until
    # indexed; len() resolves the slices, which an empty range ("train[5:2]") fails.
    try:
        source = builder.as_data_source(split=split)
        len(source)
    except ValueError as error:
        raise ValueError(f"dataset {name!r} has no split {split!r} (TFDS: {error}); its "
                         f"splits are {sorted(builder.info.splits)}") from error
    if name == "digits":
        # 1,797 images of 8x8: decoded once. TFDS decodes a record per read (0.35 ms here),
        # which made the input, not the model, the bottleneck of the demo's steps.
        return InMemorySource(source)
    return source


class InMemorySource:
    """Every example of a small random-access ``source``, decoded once into memory."""

    def __init__(self, source: Any) -> None:
        self.examples = [source[i] for i in range(len(source))]
        self.name = repr(source)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Any:
        return self.examples[index]

    def __repr__(self) -> str:
        return f"InMemorySource({self.name}, {len(self)} examples)"
