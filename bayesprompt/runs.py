"""Run directories, engine-state checkpoints and their serialiser.

A **run directory** holds everything needed to reproduce, resume and evaluate one run::

    runs/NAME/
      config.json        {"format_version", "bayesprompt_version", "config": FitConfig fields,
                          "projection": projection metadata}
      projection.npz     the random projection (matrix, seed, std)
      prior_centre.npz   the dev-tuned prior centre (only with prior_centre="dev")
      dev_centre/        checkpoint.npz and diagnostics.jsonl of that dev stage's CMA-ES steps
      checkpoint.npz     latest engine state + diagnostics so far + meter reading (atomic)
      diagnostics.jsonl  one JSON record per completed engine iteration
      posterior.json     final posterior metadata (Posterior.save, its own format_version)
      posterior.npz      final posterior samples and log weights
      meter.json         API-call readings: inference, evaluation
      metrics.json       test metrics, selective prediction, OOD detection, ArviZ summary
      predictions.npz    per-sample probabilities [S, N, C], weights, labels (test and OOD)
      plots/*.png        calibration, risk-coverage and uncertainty plots

Every file is written atomically (a temporary file in the same folder, flushed and
renamed over the target), so a killed process leaves either the previous or the new
version of a file, never half of one. Every reader turns a missing, truncated or
malformed file into a :class:`RunDirectoryError` that names the file.

Engine states
-------------
:class:`StateCodec` turns an engine state into one ``.npz`` archive without pickling:
frozen dataclasses of tensors, numpy arrays, numbers, strings, ``None``, tuples, lists,
string-keyed dicts and nested dataclasses (e.g. :class:`~bayesprompt.models.potential.Evaluation`)
become a JSON tree (stored in the archive as the uint8 array ``__header__``) whose
leaves point to arrays of the archive. Dataclasses are written with their qualified
type name and only types on the codec's explicit allow-list (:data:`STATE_CLASSES`)
are written or read.

**The one documented exception** is the pycma strategy of the CMA-ES family
(``CMAState.strategy``). pycma offers no state format of its own except
``CMAEvolutionStrategy.pickle_dumps()``, i.e. pickle. Only that object is pickled (with
pycma's method), stored in the archive as a uint8 array, and read back with a
restricted unpickler that resolves nothing but pycma's classes, numpy's array and
random-generator reconstructors and
:class:`~bayesprompt.inference.cma.bbt.StrategyRandn` (:data:`PICKLE_ALLOWED_GLOBALS`).

Examples
--------
>>> import torch
>>> from bayesprompt.models.potential import Evaluation
>>> codec = StateCodec()
>>> ev = Evaluation(torch.zeros(2, 3), torch.zeros(2), torch.ones(2), {"y_pred": torch.tensor([[0], [1]])})
>>> back = codec.loads(codec.dumps(ev))[0]
>>> torch.equal(back.log_likelihood, ev.log_likelihood), sorted(back.outputs)
(True, ['y_pred'])
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import math
import pickle
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesprompt.atomic import atomic_write_bytes, atomic_write_text
from bayesprompt.inference.base import Engine, init_state, run
from bayesprompt.inference.empirical_bayes import DevCentre
from bayesprompt.inference.posterior import ARCHIVE_ERRORS, Posterior
from bayesprompt.lm.meter import Meter
from bayesprompt.models.potential import Potential
from bayesprompt.models.projection import RandomProjection
from bayesprompt.predict import EnsemblePredictions

__all__ = [
    "RUN_FORMAT_VERSION",
    "STATE_CLASSES",
    "PICKLE_ALLOWED_GLOBALS",
    "Checkpoint",
    "RunDirectory",
    "RunDirectoryError",
    "RunPredictions",
    "StateCodec",
    "StateSerializationError",
    "atomic_write_bytes",
    "atomic_write_text",
    "config_digest",
    "jsonable",
    "run_with_checkpoints",
]

#: Version of the run-directory layout and of the files written here (config, checkpoint,
#: predictions, metrics, meter). The posterior files carry their own version.
RUN_FORMAT_VERSION = 1

#: Qualified names of the dataclasses a default :class:`StateCodec` may write and read.
#: Add a new engine's state class here (and its nested dataclasses) to checkpoint it.
STATE_CLASSES: tuple[str, ...] = (
    "bayesprompt.models.potential.Evaluation",
    "bayesprompt.inference.smc.tempered.TemperedSMCState",
    "bayesprompt.inference.smc.abc.ABCSMCState",
    "bayesprompt.inference.smc.abc.PartialPopulation",
    "bayesprompt.inference.smc.abc_mcmc.AdaptiveABCSMCState",
    "bayesprompt.inference.cma.bbt.CMAState",
    "bayesprompt.inference.cma.ensembles.EnsembleState",
    "bayesprompt.inference.cma.elbo.CMAELBOState",
    "bayesprompt.inference.kalman.eki.EKIState",
    "bayesprompt.inference.kalman.eks.EKSState",
    "bayesprompt.inference.mcmc.ensemble.EnsembleState",
    "bayesprompt.inference.mcmc.random_walk.RandomWalkState",
    "bayesprompt.inference.mcmc.random_walk.RandomWalkChain",
    "bayesprompt.inference.mcmc.random_walk.KernelState",
    "bayesprompt.models.priors.GaussianPrior",
)

#: ``(module, name)`` pairs the restricted unpickler of pycma strategies resolves, besides
#: any class or function defined in a ``cma`` module.
PICKLE_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("bayesprompt.inference.cma.bbt", "StrategyRandn"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.linalg", "eigh"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._pcg64", "PCG64DXSM"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._philox", "Philox"),
        ("numpy.random._sfc64", "SFC64"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("collections", "OrderedDict"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "slice"),
        ("builtins", "range"),  # pycma's indices of mirrored samples (population below 6)
    }
)

CONFIG_FILE = "config.json"
PROJECTION_FILE = "projection.npz"
CHECKPOINT_FILE = "checkpoint.npz"
PRIOR_CENTRE_FILE = "prior_centre.npz"
DIAGNOSTICS_FILE = "diagnostics.jsonl"
POSTERIOR_FILES = ("posterior.json", "posterior.npz")
METER_FILE = "meter.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
PLOTS_DIR = "plots"
#: Sub-folder with the step checkpoints of the dev stage of ``prior_centre="dev"``.
DEV_CENTRE_DIR = "dev_centre"
#: Files (and the plots folder's PNGs, and the checkpoint and diagnostics in DEV_CENTRE_DIR)
#: a fresh run replaces; nothing else is ever deleted.
RUN_FILES = (CONFIG_FILE, PROJECTION_FILE, PRIOR_CENTRE_FILE, CHECKPOINT_FILE, DIAGNOSTICS_FILE, *POSTERIOR_FILES,
             METER_FILE, METRICS_FILE, PREDICTIONS_FILE)

_HEADER = "__header__"


class RunDirectoryError(ValueError):
    """A run directory is missing a file, or a file is unreadable, corrupt or from another format version."""


class StateSerializationError(ValueError):
    """An engine state cannot be written (unsupported value, unregistered type) or read back."""


# ---------------------------------------------------------------------------- atomic files
def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of a config's canonical JSON (ties a checkpoint to the config it ran with).

    The digest is the same before and after a JSON round trip (tuples become lists).

    Examples
    --------
    >>> config_digest({"a": (1, 2)}) == config_digest(json.loads(json.dumps({"a": [1, 2]})))
    True
    """
    return hashlib.sha256(json.dumps(jsonable(config), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- state codec
def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_class(name: str) -> type:
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise StateSerializationError(f"state class {name!r} cannot be imported: {err}") from err
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise StateSerializationError(f"state class {name!r} is not a dataclass")
    return cls


def _torch_dtype(name: str, path: str) -> torch.dtype:
    """``"torch.float32"`` -> ``torch.float32`` (only real torch dtypes)."""
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise StateSerializationError(f"{path}: unknown torch dtype {name!r}")
    return dtype


class _Encoder:
    """One encoding pass: collects arrays while building the JSON tree."""

    def __init__(self, classes: Mapping[str, type]) -> None:
        self.classes = classes
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, array: np.ndarray) -> str:
        key = f"a{len(self.arrays)}"
        self.arrays[key] = array
        return key

    def node(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value  # Python's JSON round-trips these exactly (big ints, inf and nan included)
        if isinstance(value, torch.Tensor):
            return self._tensor(value, path)
        if isinstance(value, torch.dtype):
            return {"type": "torch_dtype", "name": str(value)}
        if isinstance(value, np.ndarray):
            return self._ndarray(value, path)
        if isinstance(value, np.generic):
            return value.item()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self._dataclass(value, path)
        if isinstance(value, (tuple, list)):
            kind = "tuple" if isinstance(value, tuple) else "list"
            return {"type": kind, "items": [self.node(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            return self._dict(value, path)
        if _is_pycma_strategy(value):
            data = value.pickle_dumps()
            _unpickle_pycma(data, path)  # a strategy that would not restore fails here, not at resume
            return {"type": "pycma", "array": self.add(np.frombuffer(data, dtype=np.uint8))}
        raise StateSerializationError(
            f"cannot serialise {path} of type {type(value).__name__}: engine states may hold tensors, "
            "torch dtypes, numpy arrays, numbers, strings, None, tuples, lists, str-keyed dicts, registered "
            "dataclasses and pycma strategies"
        )

    def _tensor(self, value: torch.Tensor, path: str) -> dict[str, Any]:
        tensor = value.detach().cpu()
        stored = tensor.float() if tensor.dtype == torch.bfloat16 else tensor
        try:
            array = stored.contiguous().numpy()
        except TypeError as err:
            raise StateSerializationError(f"cannot serialise tensor {path} of dtype {tensor.dtype}: {err}") from err
        return {"type": "tensor", "array": self.add(array), "dtype": str(tensor.dtype), "shape": list(tensor.shape)}

    def _ndarray(self, value: np.ndarray, path: str) -> dict[str, Any]:
        if value.dtype.hasobject:
            raise StateSerializationError(f"cannot serialise {path}: numpy object arrays would need pickle")
        return {"type": "ndarray", "array": self.add(np.ascontiguousarray(value)), "dtype": str(value.dtype)}

    def _dataclass(self, value: Any, path: str) -> dict[str, Any]:
        name = _qualname(type(value))
        if self.classes.get(name) is not type(value):
            raise StateSerializationError(
                f"cannot serialise {path}: dataclass {name} is not on the state allow-list; add it to "
                "bayesprompt.runs.STATE_CLASSES (or pass it to StateCodec(extra_classes=...))"
            )
        fields = {f.name: self.node(getattr(value, f.name), f"{path}.{f.name}") for f in dataclasses.fields(value)}
        return {"type": "dataclass", "class": name, "fields": fields}

    def _dict(self, value: dict, path: str) -> dict[str, Any]:
        if not all(isinstance(k, str) for k in value):
            raise StateSerializationError(f"cannot serialise {path}: dict keys must be strings")
        return {"type": "dict", "items": {k: self.node(v, f"{path}[{k!r}]") for k, v in value.items()}}


class _Decoder:
    """One decoding pass over a JSON tree and its arrays."""

    def __init__(self, classes: Mapping[str, type], arrays: Mapping[str, np.ndarray]) -> None:
        self.classes = classes
        self.arrays = arrays

    def array(self, node: Mapping[str, Any], path: str) -> np.ndarray:
        key = node.get("array")
        if key not in self.arrays:
            raise StateSerializationError(f"{path}: array {key!r} is missing from the archive")
        return self.arrays[key]

    def node(self, node: Any, path: str) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict) or "type" not in node:
            raise StateSerializationError(f"{path}: malformed node {str(node)[:80]!r}")
        kind = node["type"]
        reader = {
            "tensor": self._tensor,
            "ndarray": self._ndarray,
            "dataclass": self._dataclass,
            "tuple": lambda n, p: tuple(self._items(n, p)),
            "list": lambda n, p: list(self._items(n, p)),
            "dict": self._dict,
            "pycma": self._pycma,
            "torch_dtype": lambda n, p: _torch_dtype(n["name"], p),
        }.get(kind)
        if reader is None:
            raise StateSerializationError(f"{path}: unknown node type {kind!r}")
        try:
            return reader(node, path)
        except (KeyError, TypeError, AttributeError) as err:
            raise StateSerializationError(f"{path}: malformed {kind} node ({type(err).__name__}: {err})") from err

    def _items(self, node: Mapping[str, Any], path: str) -> list[Any]:
        return [self.node(v, f"{path}[{i}]") for i, v in enumerate(node["items"])]

    def _dict(self, node: Mapping[str, Any], path: str) -> dict[str, Any]:
        return {k: self.node(v, f"{path}[{k!r}]") for k, v in node["items"].items()}

    def _tensor(self, node: Mapping[str, Any], path: str) -> torch.Tensor:
        array = self.array(node, path)
        if list(array.shape) != list(node["shape"]):
            raise StateSerializationError(f"{path}: array has shape {list(array.shape)}, expected {node['shape']}")
        return torch.from_numpy(np.array(array)).to(_torch_dtype(node["dtype"], path))

    def _ndarray(self, node: Mapping[str, Any], path: str) -> np.ndarray:
        array = self.array(node, path)
        if str(array.dtype) != node["dtype"]:
            raise StateSerializationError(f"{path}: array has dtype {array.dtype}, expected {node['dtype']}")
        return np.array(array)

    def _dataclass(self, node: Mapping[str, Any], path: str) -> Any:
        name = node["class"]
        cls = self.classes.get(name)
        if cls is None:
            raise StateSerializationError(
                f"{path}: class {name!r} is not on the state allow-list {sorted(self.classes)}"
            )
        declared = list(dataclasses.fields(cls))
        stored = node["fields"]
        # A field added to the class since the archive was written is filled with its default
        # (e.g. TemperedSMCState.interrupted); an unknown or a missing required field is an error.
        defaulted = {f.name for f in declared if f.init and f.name not in stored and _has_default(f)}
        if set(stored) | defaulted != {f.name for f in declared}:
            raise StateSerializationError(
                f"{path}: {name} has fields {sorted(f.name for f in declared)}, the archive has {sorted(stored)} "
                "(written by another version of the class?)"
            )
        values = {f.name: self.node(stored[f.name], f"{path}.{f.name}") for f in declared if f.name in stored}
        instance = cls(**{f.name: values[f.name] for f in declared if f.init and f.name in values})
        for f in declared:
            if not f.init:
                object.__setattr__(instance, f.name, values[f.name])
        return instance

    def _pycma(self, node: Mapping[str, Any], path: str) -> Any:
        return _unpickle_pycma(self.array(node, path).tobytes(), path)


def _unpickle_pycma(data: bytes, path: str) -> Any:
    """The pycma strategy pickled in ``data``, through :class:`_RestrictedUnpickler`."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except StateSerializationError as err:
        raise StateSerializationError(f"{path}: {err}") from err
    except Exception as err:  # unpickling can fail in many ways on corrupt bytes
        raise StateSerializationError(f"{path}: cannot restore the pycma strategy: {err}") from err


def _is_pycma_strategy(value: Any) -> bool:
    module = type(value).__module__
    return (module == "cma" or module.startswith("cma.")) and hasattr(value, "pickle_dumps")


def _has_default(field: dataclasses.Field) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for pycma strategies: resolves only pycma and the allow-listed globals."""

    def find_class(self, module: str, name: str) -> Any:
        if "." in name:
            raise StateSerializationError(f"refusing to unpickle the dotted global {module}.{name}")
        if (module, name) in PICKLE_ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "cma" or module.startswith("cma."):
            obj = super().find_class(module, name)
            defined_in = getattr(obj, "__module__", "") or ""
            if callable(obj) and (defined_in == "cma" or defined_in.startswith("cma.")):
                return obj
        raise StateSerializationError(f"refusing to unpickle {module}.{name}: not a pycma or allow-listed global")


class StateCodec:
    """Serialise engine states to one ``.npz`` archive (JSON tree + arrays, no pickle).

    Parameters
    ----------
    classes : iterable of str or type
        The dataclass allow-list (qualified names or classes); default :data:`STATE_CLASSES`.
    extra_classes : iterable of str or type
        Added to ``classes`` (e.g. a custom engine's state).

    Examples
    --------
    >>> from bayesprompt.inference.smc import TemperedSMCState
    >>> from bayesprompt.models.potential import Evaluation
    >>> state = TemperedSMCState(Evaluation(torch.randn(4, 2), torch.zeros(4), torch.zeros(4)), 0.5,
    ...                          -1.0, 1.0, 2, 12, torch.Generator().manual_seed(0).get_state())
    >>> codec = StateCodec()
    >>> restored, meta = codec.loads(codec.dumps(state, {"note": "x"}))
    >>> restored.beta, restored.stage, meta
    (0.5, 2, {'note': 'x'})
    >>> torch.equal(restored.particles.u, state.particles.u)
    True
    """

    def __init__(self, classes: Iterable[str | type] = STATE_CLASSES, extra_classes: Iterable[str | type] = ()) -> None:
        resolved: dict[str, type] = {}
        for entry in (*classes, *extra_classes):
            cls = _import_class(entry) if isinstance(entry, str) else entry
            if not dataclasses.is_dataclass(cls):
                raise StateSerializationError(f"{cls!r} is not a dataclass")
            resolved[_qualname(cls)] = cls
        self._classes = resolved

    @property
    def class_names(self) -> tuple[str, ...]:
        """Qualified names of the allowed dataclasses."""
        return tuple(self._classes)

    def encode(self, state: Any) -> tuple[Any, dict[str, np.ndarray]]:
        """Return the JSON tree of ``state`` and the arrays its leaves refer to."""
        encoder = _Encoder(self._classes)
        tree = encoder.node(state, "state")
        return tree, encoder.arrays

    def decode(self, tree: Any, arrays: Mapping[str, np.ndarray]) -> Any:
        """Rebuild a state from :meth:`encode`'s output."""
        return _Decoder(self._classes, arrays).node(tree, "state")

    def dumps(self, state: Any, meta: Mapping[str, Any] | None = None) -> bytes:
        """One ``.npz`` archive: the state's arrays plus a JSON header ``{"state", "meta"}``.

        ``meta`` must be JSON-serialisable (non-finite floats are kept, Python-JSON style).
        """
        tree, arrays = self.encode(state)
        header = json.dumps({"format_version": RUN_FORMAT_VERSION, "state": tree, "meta": dict(meta or {})})
        buffer = io.BytesIO()
        np.savez(buffer, **{_HEADER: np.frombuffer(header.encode(), dtype=np.uint8)}, **arrays)
        return buffer.getvalue()

    def loads(self, data: bytes) -> tuple[Any, dict[str, Any]]:
        """Inverse of :meth:`dumps`: ``(state, meta)``.

        Raises
        ------
        StateSerializationError
            For an unreadable archive, a header from another format version, unknown
            classes or missing arrays.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except ARCHIVE_ERRORS as err:
            raise StateSerializationError(f"not a readable .npz archive ({type(err).__name__}: {err})") from err
        if _HEADER not in arrays:
            raise StateSerializationError(f"the archive has no {_HEADER} entry")
        try:
            header = json.loads(arrays.pop(_HEADER).tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StateSerializationError(f"the archive header is not valid JSON: {err}") from err
        if not isinstance(header, dict):
            raise StateSerializationError("the archive header is not a JSON object")
        _check_version(header.get("format_version"), "the state archive", StateSerializationError)
        return self.decode(header.get("state"), arrays), header.get("meta", {})


def _check_version(version: Any, what: str, error: type[Exception]) -> None:
    if version != RUN_FORMAT_VERSION:
        raise error(
            f"{what} has format_version {version!r}, but this bayesprompt reads format_version "
            f"{RUN_FORMAT_VERSION}; use the bayesprompt release that wrote it"
        )


# ---------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Checkpoint:
    """An engine state plus what is needed to continue the run exactly.

    Attributes
    ----------
    state : engine state
        The state after ``iteration`` completed engine steps (0: after ``init``).
    engine : str
        Engine name.
    iteration : int
        Completed steps.
    diagnostics : list of dict
        The info records of those steps.
    meter : dict
        The meter reading (``MeterSnapshot.to_dict()``) at the checkpoint.
    elapsed_seconds : float
        Inference wall time so far.
    config_sha256 : str
        :func:`config_digest` of the run's config.
    """

    state: Any
    engine: str
    iteration: int
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    meter: dict[str, Any] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    config_sha256: str = ""


class _Checkpointer:
    """``run(callback=...)``: writes a checkpoint after every completed engine step."""

    def __init__(self, run_dir: "RunDirectory", codec: StateCodec, meter: Meter, start: Checkpoint, started: float) -> None:
        self.run_dir, self.codec, self.meter, self.start, self.started = run_dir, codec, meter, start, started
        self.iteration = start.iteration
        self.diagnostics = list(start.diagnostics)

    def __call__(self, state: Any, info: dict[str, Any]) -> None:
        self.iteration += 1
        self.diagnostics.append(dict(info))
        self.write(state)

    def write(self, state: Any) -> None:
        """Checkpoint ``state`` with the diagnostics and the meter reading so far."""
        checkpoint = dataclasses.replace(
            self.start,
            state=state,
            iteration=self.iteration,
            diagnostics=self.diagnostics,
            meter=self.meter.snapshot().to_dict(),
            elapsed_seconds=self.start.elapsed_seconds + time.perf_counter() - self.started,
        )
        self.run_dir.write_checkpoint(checkpoint, self.codec)


def run_with_checkpoints(
    engine: Engine,
    potential: Potential,
    run_dir: "RunDirectory | None",
    *,
    seed: int,
    meter: Meter,
    config_sha256: str,
    start: Checkpoint | None = None,
    codec: StateCodec | None = None,
    progress: bool = True,
) -> tuple[Posterior, float]:
    """:func:`~bayesprompt.inference.run`, checkpointing into ``run_dir`` after ``init`` and every step.

    Parameters
    ----------
    engine, potential, seed, meter, progress
        As for :func:`~bayesprompt.inference.run`.
    run_dir : RunDirectory or None
        Where ``checkpoint.npz`` and ``diagnostics.jsonl`` go (``None``: no checkpoints).
    config_sha256 : str
        What the checkpoints belong to (:func:`config_digest` of the run's config).
    start : Checkpoint or None
        Continue from this checkpoint: the meter is restored from it and the engine
        continues from its state, so the posterior equals an uninterrupted run's.
    codec : StateCodec or None
        Serialiser of the states (default :class:`StateCodec`).

    Returns
    -------
    posterior : Posterior
        With the diagnostics of every step, those before ``start`` included.
    seconds : float
        Inference wall time, that before ``start`` included.

    Raises
    ------
    RunDirectoryError
        If ``start`` belongs to another engine or config.

    Examples
    --------
    >>> import tempfile
    >>> from bayesprompt.inference.smc import TemperedSMC
    >>> from bayesprompt.testing import LinearGaussian
    >>> problem = LinearGaussian.random(dim=2, num_obs=5, seed=0)
    >>> potential = Potential(problem.model, meter=problem.meter)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     run_dir = RunDirectory(tmp)
    ...     posterior, _ = run_with_checkpoints(TemperedSMC(num_particles=64), potential, run_dir, seed=0,
    ...                                         meter=problem.meter, config_sha256="demo", progress=False)
    ...     run_dir.read_checkpoint(StateCodec()).iteration == len(posterior.diagnostics) > 0
    True
    """
    started = time.perf_counter()
    fresh = start is None
    if start is None:
        state = init_state(engine, potential, seed)
        start = Checkpoint(None, engine.name, 0, [], {}, 0.0, config_sha256)
    else:
        if (start.engine, start.config_sha256) != (engine.name, config_sha256):
            where = f"{run_dir.file(CHECKPOINT_FILE)}: " if run_dir is not None else ""
            raise RunDirectoryError(
                f"{where}checkpoint of engine {start.engine!r} (config {start.config_sha256[:12]}) cannot continue "
                f"engine {engine.name!r} (config {config_sha256[:12]}); delete the checkpoint to start afresh"
            )
        meter.restore(start.meter)
        state = start.state
    callback = None
    if run_dir is not None:
        callback = _Checkpointer(run_dir, codec if codec is not None else StateCodec(), meter, start, started)
        if fresh:
            callback.write(state)
    posterior = run(engine, potential, seed=seed, meter=meter, progress=progress, callback=callback, state=state)
    posterior.diagnostics = [*start.diagnostics, *posterior.diagnostics]
    return posterior, start.elapsed_seconds + time.perf_counter() - started


# ---------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class RunPredictions:
    """Saved ensemble predictions of a run (``predictions.npz``).

    Attributes
    ----------
    test : EnsemblePredictions
        Per-sample test probabilities (one-hot votes for likelihood-free engines).
    test_probs : Tensor ``[N, C]``
        The ensemble probabilities the metrics use (votes smoothed for likelihood-free runs).
    ood : dict of EnsemblePredictions
        Per OOD task: per-sample probabilities over the *in-distribution* classes; ``labels``
        are the OOD task's own labels.
    task : str
        In-distribution task.
    """

    test: EnsemblePredictions
    test_probs: torch.Tensor
    ood: dict[str, EnsemblePredictions]
    task: str


def _prediction_arrays(prefix: str, predictions: EnsemblePredictions) -> dict[str, np.ndarray]:
    return {
        f"{prefix}/probs": predictions.probs.detach().cpu().numpy(),
        f"{prefix}/weights": predictions.weights.detach().cpu().numpy(),
        f"{prefix}/labels": predictions.labels.detach().cpu().numpy(),
    }


def _prediction_from(arrays: Mapping[str, np.ndarray], prefix: str) -> EnsemblePredictions:
    return EnsemblePredictions(
        torch.from_numpy(arrays[f"{prefix}/probs"]),
        torch.from_numpy(arrays[f"{prefix}/weights"]),
        torch.from_numpy(arrays[f"{prefix}/labels"]),
    )


# ---------------------------------------------------------------------------- run directory
class RunDirectory:
    """Reader and writer of one run directory (see the module docstring for the layout).

    Parameters
    ----------
    path : str or Path
        The directory.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     run = RunDirectory.create(Path(tmp) / "demo", {"task": "sst2"})
    ...     run.read_config(), run.has_checkpoint()
    ({'task': 'sst2'}, False)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | Path, config: Mapping[str, Any], projection: Mapping[str, Any] | None = None) -> "RunDirectory":
        """Start a fresh run in ``path``: remove a previous run's files there, write ``config.json``.

        Only the files of the layout (``plots/*.png`` and the checkpoints in ``dev_centre/``
        included) are removed; other files stay.
        """
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RunDirectoryError(f"{run.path}: exists and is not a directory")
        run.path.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            (run.path / name).unlink(missing_ok=True)
        for name in (CHECKPOINT_FILE, DIAGNOSTICS_FILE):
            (run.path / DEV_CENTRE_DIR / name).unlink(missing_ok=True)
        for png in run.plots_dir.glob("*.png"):
            png.unlink()
        run.write_config(config, projection)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDirectory":
        """An existing run directory (it must hold a ``config.json``)."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirectoryError(f"{run.path}: no such run directory")
        run._require(CONFIG_FILE, "not a run directory: config.json is missing")
        return run

    @property
    def plots_dir(self) -> Path:
        """``plots/`` (not created until a plot is written)."""
        return self.path / PLOTS_DIR

    def file(self, name: str) -> Path:
        """Path of a file of the run."""
        return self.path / name

    # ------------------------------------------------------------------ low level
    def _require(self, name: str, hint: str = "missing file") -> Path:
        path = self.file(name)
        if not path.is_file():
            raise RunDirectoryError(f"{path}: {hint}")
        return path

    def _read_json(self, name: str, hint: str = "missing file") -> Any:
        path = self._require(name, hint)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunDirectoryError(f"{path}: not valid JSON ({err}); the file is corrupt") from err

    def _read_versioned_json(self, name: str) -> dict[str, Any]:
        data = self._read_json(name)
        if not isinstance(data, dict):
            raise RunDirectoryError(f"{self.file(name)}: expected a JSON object, got {type(data).__name__}")
        _check_version(data.get("format_version"), str(self.file(name)), RunDirectoryError)
        return data

    def _write_json(self, name: str, data: Any) -> Path:
        return atomic_write_text(self.file(name), json.dumps(jsonable(data), indent=1) + "\n")

    def _read_npz(self, name: str, hint: str = "missing file") -> dict[str, np.ndarray]:
        path = self._require(name, hint)
        try:  # from bytes: numpy leaves the file open when the archive is unreadable
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except ARCHIVE_ERRORS as err:
            raise RunDirectoryError(
                f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); the file is truncated or corrupt"
            ) from err

    # ------------------------------------------------------------------ config & projection
    def write_config(self, config: Mapping[str, Any], projection: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` (``format_version``, package version, config, projection metadata)."""
        from bayesprompt import __version__

        document = {"format_version": RUN_FORMAT_VERSION, "bayesprompt_version": __version__, "config": dict(config)}
        if projection is not None:
            document["projection"] = dict(projection)
        return self._write_json(CONFIG_FILE, document)

    def read_config(self) -> dict[str, Any]:
        """The config dict of ``config.json`` (format version checked)."""
        document = self._read_versioned_json(CONFIG_FILE)
        config = document.get("config")
        if not isinstance(config, dict):
            raise RunDirectoryError(f"{self.file(CONFIG_FILE)}: has no 'config' object")
        return config

    def write_projection(self, projection: RandomProjection) -> Path:
        """Write ``projection.npz`` atomically."""
        buffer = io.BytesIO()
        projection.save(buffer)
        return atomic_write_bytes(self.file(PROJECTION_FILE), buffer.getvalue())

    def read_projection(self) -> RandomProjection:
        """The saved projection."""
        arrays = self._read_npz(PROJECTION_FILE)
        try:
            return RandomProjection(
                matrix=torch.from_numpy(arrays["matrix"]),
                n_tokens=int(arrays["n_tokens"]),
                embed_dim=int(arrays["embed_dim"]),
                seed=int(arrays["seed"]),
                std=float(arrays["std"]),
            )
        except (KeyError, ValueError, TypeError) as err:
            raise RunDirectoryError(f"{self.file(PROJECTION_FILE)}: not a projection ({err})") from err

    def write_prior_centre(self, centre: DevCentre) -> Path:
        """Write ``prior_centre.npz`` (the dev stage of ``prior_centre="dev"``) atomically."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            z=centre.z.numpy(),
            api_calls=np.int64(centre.api_calls),
            dev_log_likelihood=np.float64(centre.dev_log_likelihood),
            iterations=np.int64(centre.iterations),
        )
        return atomic_write_bytes(self.file(PRIOR_CENTRE_FILE), buffer.getvalue())

    def read_prior_centre(self) -> DevCentre:
        """The saved dev-tuned prior centre."""
        arrays = self._read_npz(PRIOR_CENTRE_FILE, "missing file (the dev stage of prior_centre='dev' did not finish)")
        try:
            return DevCentre(
                z=torch.from_numpy(arrays["z"]).float(),
                api_calls=int(arrays["api_calls"]),
                dev_log_likelihood=float(arrays["dev_log_likelihood"]),
                iterations=int(arrays["iterations"]),
            )
        except (KeyError, ValueError, TypeError) as err:
            raise RunDirectoryError(f"{self.file(PRIOR_CENTRE_FILE)}: not a prior centre ({err})") from err

    # ------------------------------------------------------------------ checkpoints & diagnostics
    def has_checkpoint(self) -> bool:
        """Whether ``checkpoint.npz`` exists."""
        return self.file(CHECKPOINT_FILE).is_file()

    def write_checkpoint(self, checkpoint: Checkpoint, codec: StateCodec) -> Path:
        """Write ``checkpoint.npz`` atomically, then ``diagnostics.jsonl`` from it."""
        meta = {
            "engine": checkpoint.engine,
            "iteration": checkpoint.iteration,
            "diagnostics": _plain(checkpoint.diagnostics),
            "meter": dict(checkpoint.meter),
            "elapsed_seconds": checkpoint.elapsed_seconds,
            "config_sha256": checkpoint.config_sha256,
        }
        path = atomic_write_bytes(self.file(CHECKPOINT_FILE), codec.dumps(checkpoint.state, meta))
        self.write_diagnostics(checkpoint.diagnostics)
        return path

    def read_checkpoint(self, codec: StateCodec) -> Checkpoint:
        """The latest checkpoint."""
        path = self._require(CHECKPOINT_FILE, "missing file (no engine step was checkpointed yet)")
        try:
            state, meta = codec.loads(path.read_bytes())
            return Checkpoint(
                state=state,
                engine=str(meta["engine"]),
                iteration=int(meta["iteration"]),
                diagnostics=list(meta["diagnostics"]),
                meter=dict(meta["meter"]),
                elapsed_seconds=float(meta["elapsed_seconds"]),
                config_sha256=str(meta["config_sha256"]),
            )
        except StateSerializationError as err:
            raise RunDirectoryError(f"{path}: {err}") from err
        except (KeyError, TypeError, ValueError) as err:
            raise RunDirectoryError(f"{path}: incomplete checkpoint metadata ({type(err).__name__}: {err})") from err

    def write_diagnostics(self, records: Sequence[Mapping[str, Any]]) -> Path:
        """Write ``diagnostics.jsonl`` (one record per line) atomically."""
        lines = "".join(json.dumps(jsonable(record)) + "\n" for record in records)
        return atomic_write_text(self.file(DIAGNOSTICS_FILE), lines)

    def read_diagnostics(self) -> list[dict[str, Any]]:
        """The records of ``diagnostics.jsonl``."""
        path = self._require(DIAGNOSTICS_FILE)
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RunDirectoryError(f"{path}: line {number} is not valid JSON ({err})") from err
        return records

    # ------------------------------------------------------------------ posterior, meter, metrics
    def write_posterior(self, posterior: Posterior) -> None:
        """``posterior.json`` and ``posterior.npz`` (:meth:`Posterior.save`)."""
        posterior.save(self.path)

    def require_posterior(self) -> None:
        """Raise :class:`RunDirectoryError` (naming the file) unless the fit wrote its posterior."""
        for name in POSTERIOR_FILES:
            self._require(name, "missing file (the run has not finished; resume it with `bayesprompt fit --resume`)")

    def read_posterior(self) -> Posterior:
        """The final posterior."""
        self.require_posterior()
        try:
            return Posterior.load(self.path)
        except ARCHIVE_ERRORS as err:
            raise RunDirectoryError(f"{self.path}: cannot read the posterior: {err}") from err

    def write_meter(self, readings: Mapping[str, Any]) -> Path:
        """``meter.json``: API-call readings (e.g. ``inference``, ``evaluation``)."""
        return self._write_json(METER_FILE, {"format_version": RUN_FORMAT_VERSION, **readings})

    def read_meter(self) -> dict[str, Any]:
        """The readings of ``meter.json``."""
        data = self._read_versioned_json(METER_FILE)
        data.pop("format_version")
        return data

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        """``metrics.json``."""
        return self._write_json(METRICS_FILE, {"format_version": RUN_FORMAT_VERSION, **metrics})

    def read_metrics(self) -> dict[str, Any]:
        """The metrics of ``metrics.json``."""
        data = self._read_versioned_json(METRICS_FILE)
        data.pop("format_version")
        return data

    # ------------------------------------------------------------------ predictions
    def write_predictions(self, predictions: RunPredictions) -> Path:
        """``predictions.npz``: test and OOD per-sample probabilities, weights and labels."""
        header = {"format_version": RUN_FORMAT_VERSION, "task": predictions.task, "ood": list(predictions.ood)}
        arrays = {_HEADER: np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
        arrays.update(_prediction_arrays("test", predictions.test))
        arrays["test/ensemble_probs"] = predictions.test_probs.detach().cpu().numpy()
        for index, ood in enumerate(predictions.ood.values()):
            arrays.update(_prediction_arrays(f"ood{index}", ood))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write_bytes(self.file(PREDICTIONS_FILE), buffer.getvalue())

    def read_predictions(self) -> RunPredictions:
        """The saved predictions."""
        path = self.file(PREDICTIONS_FILE)
        arrays = self._read_npz(PREDICTIONS_FILE, "missing file (run `bayesprompt evaluate` first)")
        try:
            header = json.loads(arrays[_HEADER].tobytes().decode())
            _check_version(header.get("format_version"), str(path), RunDirectoryError)
            return RunPredictions(
                test=_prediction_from(arrays, "test"),
                test_probs=torch.from_numpy(arrays["test/ensemble_probs"]),
                ood={name: _prediction_from(arrays, f"ood{i}") for i, name in enumerate(header["ood"])},
                task=str(header["task"]),
            )
        except RunDirectoryError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError) as err:
            raise RunDirectoryError(f"{path}: malformed predictions ({type(err).__name__}: {err})") from err


# ---------------------------------------------------------------------------- JSON helpers
def _plain(value: Any) -> Any:
    """Tensors and numpy values inside containers to Python types (non-finite floats kept)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def jsonable(value: Any) -> Any:
    """Tensors and numpy values to Python types, non-finite floats to strings (``"nan"``, ``"inf"``): strict JSON.

    Examples
    --------
    >>> jsonable({"a": torch.tensor([1.0, float("inf")]), "b": (np.int64(2),)})
    {'a': [1.0, 'inf'], 'b': [2]}
    """
    value = _plain(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
