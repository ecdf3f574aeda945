"""A reader for dlib's binary serialization format, enough to load a trained `dlib::dnn` network.

dlib writes every object with `dlib::serialize` (dlib/serialize.h), a stream of self-delimiting items:

- integers: one control byte, then that many little-endian magnitude bytes. The control byte's low
  nibble is the byte count; bit 0x80 marks a negative value (unsigned integers never set it).
- floating point (float, double): a `float_details` pair (mantissa int64, exponent int16), each an
  integer as above; the value is mantissa * 2**exponent. Exponents 32000/32001/32002 stand for
  +inf/-inf/NaN.
- bool: the ASCII byte '1' or '0'.
- std::string: its length (an unsigned integer) then the raw bytes.
- tensors (dlib/dnn/tensor.h): version 2 is an int version, num_samples, k, nr, nc (as integers) and
  then the values as raw little-endian float32; version 1 wrote each value as a float item. An
  `alias_tensor` (a shaped view into a layer's flat parameter tensor) is version 1 and the 4 sizes.

A network (dlib/dnn/core.h) is written from the loss layer inwards: `add_loss_layer` writes its version
and its loss details, then its subnetwork. Every `add_layer` first writes its version and its whole
subnetwork, and only then its own layer details and bookkeeping, so a file holds all the wrappers'
version numbers first and then the layers bottom-up (the input layer first). Each layer's details start
with a name string with a version suffix ("con_4", "affine_", "fc_2", ...), which this reader uses to
dispatch. `add_tag_layer` and `add_skip_layer` write only a version and their subnetwork.

This module reads the stream into plain Python/NumPy objects (`DlibLayer` records bottom-up); turning
them into a torch module is `tkh.nets.dlib_resnet`'s job. It was written from dlib's serialization
source and checked against dlib 19.x/20 output byte for byte (the parse must consume the whole file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tkh.errors import BadInputError

# Exponent values float_details uses for non-finite numbers (dlib/float_details.h).
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


class DlibFormatError(BadInputError):
    """The bytes are not the dlib serialization this reader expects (message names offset and file)."""


@dataclass
class DlibLayer:
    """One layer's details as stored by dlib: its type name (without version suffix), fields, tensors."""

    kind: str                                   # "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc", "bn_con", ...
    version: str                                # the exact string dlib wrote ("con_4", "affine_", ...)
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.tensors.items()}
        return f"DlibLayer({self.version}, {self.fields}, {shapes})"


@dataclass
class DlibNetwork:
    """A parsed `dlib::dnn` network: loss, input layer, and the computational layers bottom-up."""

    loss: DlibLayer
    input: DlibLayer
    layers: list[DlibLayer]                     # bottom-up: layers[0] sits on the input layer
    wrapper_versions: list[int]                 # add_layer/tag/skip versions top-down as written (last: on the input)


class DlibReader:
    """Cursor over a bytes buffer with dlib's primitive decoders."""

    def __init__(self, data: bytes, name: str = "dlib file") -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.name = name

    # --- primitives --------------------------------------------------------------------------
    def _fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} at byte {self.pos}; is it a dlib dnn model file?")

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise self._fail(f"unexpected end of file reading {n} bytes")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def read_int(self) -> int:
        """A signed integer: control byte (0x80 = negative, low nibble = byte count), LE magnitude."""
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size > 8 or ctrl & 0x70:
            self.pos -= 1
            raise self._fail(f"bad integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if ctrl & 0x80 else value

    def read_uint(self) -> int:
        ctrl = self._take(1)[0]
        size = ctrl & 0x8F  # dlib masks out 3 reserved bits; a set sign bit makes size > 8 (an error)
        if size > 8:
            self.pos -= 1
            raise self._fail(f"bad unsigned integer control byte 0x{ctrl:02x}")
        return int.from_bytes(self._take(size), "little") if size else 0

    def read_float(self) -> float:
        """float/double: mantissa * 2**exponent (float_details), with inf/nan sentinels."""
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def read_bool(self) -> bool:
        ch = self._take(1)[0]
        if ch not in (ord("0"), ord("1")):
            self.pos -= 1
            raise self._fail(f"bad bool byte 0x{ch:02x}")
        return ch == ord("1")

    def read_string(self) -> str:
        n = self.read_uint()
        if n > 1 << 20:
            raise self._fail(f"implausible string length {n}")
        return bytes(self._take(n)).decode("latin-1")

    def peek_string(self, max_len: int = 64) -> str | None:
        """The string starting here if there plausibly is one (an identifier), else None; never moves."""
        start = self.pos
        try:
            n = self.read_uint()
            if not 0 < n <= max_len:
                return None
            raw = bytes(self._take(n))
        except DlibFormatError:
            return None
        finally:
            self.pos = start
        text = raw.decode("latin-1")
        return text if (text[0].isalpha() and all(c.isalnum() or c == "_" for c in text)) else None

    def read_tensor(self) -> np.ndarray:
        """A `resizable_tensor`: (num_samples, k, nr, nc) float32."""
        version = self.read_int()
        if version not in (1, 2):
            raise self._fail(f"unknown tensor version {version}")
        shape = tuple(self.read_int() for _ in range(4))
        if any(s < 0 for s in shape):
            raise self._fail(f"negative tensor size {shape}")
        count = int(np.prod(shape))
        if version == 2:
            raw = self._take(4 * count)
            values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        else:
            values = np.array([self.read_float() for _ in range(count)], dtype=np.float32)
        return values.reshape(shape)

    def read_alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.read_int()
        if version != 1:
            raise self._fail(f"unknown alias_tensor version {version}")
        return tuple(self.read_int() for _ in range(4))  # type: ignore[return-value]

    # --- layer details -----------------------------------------------------------------------
    def read_details(self) -> DlibLayer:
        version = self.read_string()
        reader = _DETAILS.get(version)
        if reader is None:
            raise self._fail(f"unsupported layer type '{version}'")
        return reader(self, version)


def _con(r: DlibReader, version: str) -> DlibLayer:
    params = r.read_tensor()
    f = {k: r.read_int() for k in ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
    filters = r.read_alias_tensor()
    biases = r.read_alias_tensor()
    for k in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
              "bias_weight_decay_multiplier"):
        f[k] = r.read_float()
    flat = params.reshape(-1)
    n_w = int(np.prod(filters))
    weight = flat[:n_w].reshape(filters)                     # (out, in, kh, kw), same order as torch
    bias = flat[n_w:n_w + int(np.prod(biases))].reshape(-1)  # (out,)
    return DlibLayer("con", version, f, {"weight": weight, "bias": bias})


def _affine(r: DlibReader, version: str) -> DlibLayer:
    params = r.read_tensor().reshape(-1)
    gamma = r.read_alias_tensor()
    r.read_alias_tensor()  # beta has gamma's shape
    mode = r.read_int()     # 0 = CONV_MODE (one scale per channel), 1 = FC_MODE (one per element)
    n = int(np.prod(gamma))
    return DlibLayer("affine", version, {"mode": mode, "shape": gamma},
                     {"gamma": params[:n].copy(), "beta": params[n:2 * n].copy()})


def _bn(r: DlibReader, version: str) -> DlibLayer:
    params = r.read_tensor().reshape(-1)
    gamma = r.read_alias_tensor()
    r.read_alias_tensor()
    tensors = {k: r.read_tensor().reshape(-1) for k in ("means", "invstds", "running_means", "running_variances")}
    f: dict[str, Any] = {"num_updates": r.read_uint(), "running_stats_window_size": r.read_uint()}
    for k in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
              "bias_weight_decay_multiplier", "eps"):
        f[k] = r.read_float()
    n = int(np.prod(gamma))
    tensors.update(gamma=params[:n].copy(), beta=params[n:2 * n].copy())
    f["mode"] = 0 if version.startswith("bn_con") else 1
    return DlibLayer("bn_con" if f["mode"] == 0 else "bn_fc", version, f, tensors)


def _pool(kind: str):
    def read(r: DlibReader, version: str) -> DlibLayer:
        f = {k: r.read_int() for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
        return DlibLayer(kind, version, f)
    return read


def _plain(kind: str):
    def read(r: DlibReader, version: str) -> DlibLayer:
        return DlibLayer(kind, version)
    return read


def _fc(r: DlibReader, version: str) -> DlibLayer:
    f: dict[str, Any] = {"num_outputs": r.read_uint(), "num_inputs": r.read_uint()}
    params = r.read_tensor().reshape(-1)
    weights = r.read_alias_tensor()  # (num_inputs, num_outputs): dlib computes output = input @ W
    biases = r.read_alias_tensor()
    f["bias_mode"] = r.read_int()  # 0 = has bias, 1 = no bias
    for k in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
              "bias_weight_decay_multiplier"):
        f[k] = r.read_float()
    n_w = weights[0] * weights[1]
    tensors = {"weight": params[:n_w].reshape(weights[0], weights[1]).T.copy()}  # torch Linear: (out, in)
    if f["bias_mode"] == 0:
        tensors["bias"] = params[n_w:n_w + int(np.prod(biases))].copy()
    return DlibLayer("fc", version, f, tensors)


def _input_rgb(r: DlibReader, version: str) -> DlibLayer:
    f: dict[str, Any] = {"avg_red": r.read_float(), "avg_green": r.read_float(), "avg_blue": r.read_float()}
    if version == "input_rgb_image_sized":
        f["nr"] = r.read_uint()
        f["nc"] = r.read_uint()
    return DlibLayer("input_rgb_image", version, f)


def _loss_metric(r: DlibReader, version: str) -> DlibLayer:
    f = {"margin": r.read_float(), "dist_thresh": r.read_float()}
    return DlibLayer("loss_metric", version, f)


_DETAILS = {
    "con_4": _con,
    "affine_": _affine,
    "bn_con2": _bn,
    "bn_fc2": _bn,
    "relu_": _plain("relu"),
    "add_prev_": _plain("add_prev"),
    "max_pool_2": _pool("max_pool"),
    "avg_pool_2": _pool("avg_pool"),
    "fc_2": _fc,
    "input_rgb_image": _input_rgb,
    "input_rgb_image_sized": _input_rgb,
    "loss_metric_": _loss_metric,
    "loss_metric_2": _loss_metric,
}


def read_dnn(path: str | Path) -> DlibNetwork:
    """Parse a dlib `add_loss_layer<..., add_layer<...>>` network file (e.g. the face-recognition ResNet).

    Only the layer types above are understood; others raise DlibFormatError naming the type. The parse
    must end exactly at the end of the file, which checks every field's size along the way.
    """
    path = Path(path)
    if not path.is_file():
        raise DlibFormatError(f"{path}: file not found")
    r = DlibReader(path.read_bytes(), str(path))
    if r.read_int() != 1:
        raise r._fail("expected add_loss_layer version 1")
    loss = r.read_details()
    if loss.kind != "loss_metric":
        raise r._fail(f"expected a metric loss, found '{loss.version}'")

    # All wrappers' versions come first; the innermost one (the add_layer on the input) is followed
    # directly by the input layer's name.
    versions: list[int] = []
    while True:
        v = r.read_int()
        name = r.peek_string()
        if name is not None and name.startswith("input"):
            versions.append(v)  # the add_layer on the input layer (version 2 or 3)
            break
        versions.append(v)
        if len(versions) > 100_000:
            raise r._fail("no input layer found")
    inp = r.read_details()
    layers = [r.read_details()]
    _read_bookkeeping(r)
    r.read_tensor()  # grad_final (the add_layer that sits on the input layer keeps it)
    if not _at_layer(r):
        r.read_uint()  # _sample_expansion_factor, written by newer dlib versions only

    # The remaining add_layers bottom-up: details, bookkeeping, and (add_layer version 2) params_grad.
    # add_tag_layer and add_skip_layer wrote nothing after their subnetwork, so they leave no trace here.
    while r.pos < len(r.buf):
        if not _at_layer(r):
            raise r._fail("expected a layer")
        layers.append(r.read_details())
        _read_bookkeeping(r)
        if r.pos < len(r.buf) and not _at_layer(r):
            r.read_tensor()  # params_grad
    return DlibNetwork(loss=loss, input=inp, layers=layers, wrapper_versions=versions)


def _read_bookkeeping(r: DlibReader) -> None:
    r.read_bool(), r.read_bool(), r.read_bool()  # setup called, gradient stale, getters disabled
    r.read_tensor(), r.read_tensor()  # x_grad, cached_output (empty in a saved model)


def _at_layer(r: DlibReader) -> bool:
    """Whether a layer's details (a known type-name string) start at the cursor."""
    return r.peek_string() in _DETAILS
