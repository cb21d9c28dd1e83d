"""Reading and writing PLY point clouds (Stanford polygon format).

Supported: the ``ascii 1.0``, ``binary_little_endian 1.0`` and ``binary_big_endian 1.0`` formats; the
``vertex`` element with ``x y z`` and optionally ``nx ny nz`` normals and ``red green blue`` colours; an optional
``face`` element (a list property ``vertex_indices`` or ``vertex_index``) on read. Other elements (e.g. the
``range_grid`` of the Stanford scans) and other vertex properties (``confidence``, ``intensity``, ``alpha``) are
skipped. Headers with CRLF line endings are accepted (the raw Stanford bunny scans have them).

Coordinates are returned as stored (no unit conversion). Faces with more than three corners are split into a
fan of triangles, so ``faces`` is always ``(F, 3)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")


class PlyData(NamedTuple):
    """Contents of a PLY file.

    Attributes:
        points: vertex positions (N, 3), in the file's units (usually metres).
        normals: vertex normals (N, 3) or None when the file has no ``nx ny nz``.
        colors: vertex colours (N, 3) uint8 or None when the file has no ``red green blue``.
        faces: triangle vertex indices (F, 3) int64 or None when the file has no faces.
    """

    points: Tensor
    normals: Tensor | None
    colors: Tensor | None
    faces: Tensor | None


class _Element(NamedTuple):
    name: str
    count: int
    props: list  # (name, dtype) or (name, count_dtype, item_dtype)


def _parse_header(data: bytes, path: str) -> tuple[str, list[_Element], int]:
    if not data.startswith(b"ply"):
        raise ValueError(f"{path} is not a PLY file (it does not start with 'ply')")
    end = data.find(b"end_header")
    if end < 0:
        raise ValueError(f"{path}: PLY header has no 'end_header'")
    nl = data.find(b"\n", end)
    body_start = len(data) if nl < 0 else nl + 1
    fmt, elements = None, []
    for raw in data[:end].decode("ascii", errors="replace").splitlines():
        tok = raw.split()
        if not tok or tok[0] in ("ply", "comment", "obj_info"):
            continue
        if tok[0] == "format":
            if len(tok) < 2 or tok[1] not in _FORMATS:
                raise ValueError(f"{path}: unsupported PLY format line {raw.strip()!r}")
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append(_Element(tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property before any element")
            try:
                if tok[1] == "list":
                    elements[-1].props.append((tok[4], _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
                else:
                    elements[-1].props.append((tok[2], _PLY_TYPES[tok[1]]))
            except (KeyError, IndexError) as e:
                raise ValueError(f"{path}: cannot parse PLY property line {raw.strip()!r}") from e
    if fmt is None:
        raise ValueError(f"{path}: PLY header has no format line")
    return fmt, elements, body_start


def _read_ascii(body: bytes, elements: list[_Element]) -> dict[str, dict[str, np.ndarray]]:
    lines = body.decode("ascii", errors="replace").splitlines()
    lines = [ln for ln in lines if ln.strip()]
    out: dict[str, dict[str, np.ndarray]] = {}
    pos = 0
    for el in elements:
        chunk = lines[pos:pos + el.count]
        if len(chunk) < el.count:
            raise ValueError(f"PLY body ends early in element {el.name!r} ({len(chunk)} of {el.count} rows)")
        pos += el.count
        if el.name not in ("vertex", "face"):
            continue
        has_list = any(len(p) == 3 for p in el.props)
        if not has_list:
            arr = np.array(" ".join(chunk).split(), dtype=np.float64).reshape(el.count, len(el.props))
            out[el.name] = {p[0]: arr[:, i] for i, p in enumerate(el.props)}
        else:
            # only the first list property is kept (faces); scalar properties before it are skipped
            li = next(i for i, p in enumerate(el.props) if len(p) == 3)
            if len(el.props) == 1 and el.count > 0:  # fast path: every row has the same length
                tok = np.array(" ".join(chunk).split(), dtype=np.int64)
                c0 = int(tok[0])
                if tok.size == el.count * (c0 + 1):
                    tok = tok.reshape(el.count, c0 + 1)
                    if (tok[:, 0] == c0).all():
                        out[el.name] = {el.props[0][0]: tok[:, 1:]}
                        continue
            rows = [ln.split() for ln in chunk]
            out[el.name] = {el.props[li][0]: [np.array(r[li + 1:li + 1 + int(r[li])], dtype=np.int64) for r in rows]}
    return out


def _read_binary(body: bytes, elements: list[_Element], endian: str) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    off = 0
    wanted = [i for i, el in enumerate(elements) if el.name in ("vertex", "face")]
    last = max(wanted) if wanted else -1
    for ei, el in enumerate(elements):
        if ei > last:
            break
        if all(len(p) == 2 for p in el.props):
            dt = np.dtype([(p[0], endian + p[1]) for p in el.props])
            arr = np.frombuffer(body, dtype=dt, count=el.count, offset=off)
            off += dt.itemsize * el.count
            if el.name in ("vertex", "face"):
                out[el.name] = {n: arr[n] for n in dt.names}
            continue
        # elements with list properties: fast path when every row has the same list length
        fields = []
        for p in el.props:
            fields.append(p)
        lists: dict[str, list] = {}
        done = False
        if len(el.props) == 1 and el.count > 0:
            name, ct, it = el.props[0]
            c0 = int(np.frombuffer(body, dtype=endian + ct, count=1, offset=off)[0])
            dt = np.dtype([("n", endian + ct), ("v", endian + it, (c0,))])
            if off + dt.itemsize * el.count <= len(body):
                arr = np.frombuffer(body, dtype=dt, count=el.count, offset=off)
                if (arr["n"] == c0).all():
                    lists[name] = arr["v"].astype(np.int64)
                    off += dt.itemsize * el.count
                    done = True
        if not done:
            for p in el.props:
                lists[p[0]] = []
            for _ in range(el.count):
                for p in el.props:
                    if len(p) == 2:
                        off += np.dtype(p[1]).itemsize
                        continue
                    n = int(np.frombuffer(body, dtype=endian + p[1], count=1, offset=off)[0])
                    off += np.dtype(p[1]).itemsize
                    v = np.frombuffer(body, dtype=endian + p[2], count=n, offset=off)
                    off += v.itemsize * n
                    lists[p[0]].append(v.astype(np.int64))
        if el.name in ("vertex", "face"):
            out[el.name] = lists
    return out


def _faces_to_triangles(faces) -> np.ndarray:
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        if faces.shape[1] == 3:
            return faces.astype(np.int64)
        faces = list(faces)
    tris = []
    for f in faces:
        for j in range(1, len(f) - 1):
            tris.append((f[0], f[j], f[j + 1]))
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def read_ply(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> PlyData:
    """Reads vertices (with optional normals and colours) and optional faces from a PLY file.

    Args:
        path: file path.
        dtype: floating dtype of ``points`` and ``normals`` (float32 or float64).

    Returns:
        :class:`PlyData` with CPU tensors.

    Raises:
        ValueError: not a PLY file, unsupported format, missing ``x y z``, or a truncated body.
    """
    path = str(path)
    data = Path(path).read_bytes()
    fmt, elements, start = _parse_header(data, path)
    body = data[start:]
    try:
        if fmt == "ascii":
            els = _read_ascii(body, elements)
        else:
            els = _read_binary(body, elements, "<" if fmt == "binary_little_endian" else ">")
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: malformed PLY body ({e})") from e
    v = els.get("vertex")
    if v is None or not all(k in v for k in "xyz"):
        raise ValueError(f"{path}: PLY file has no vertex element with x, y, z properties")

    def stack(keys):
        return torch.from_numpy(np.stack([np.asarray(v[k], dtype=np.float64) for k in keys], -1)).to(dtype)

    points = stack("xyz")
    normals = stack(("nx", "ny", "nz")) if all(k in v for k in ("nx", "ny", "nz")) else None
    colors = None
    if all(k in v for k in ("red", "green", "blue")):
        c = np.stack([np.asarray(v[k]) for k in ("red", "green", "blue")], -1)
        if c.dtype.kind == "f":
            c = np.clip(np.round(c * 255.0 if c.max() <= 1.0 else c), 0, 255)
        colors = torch.from_numpy(c.astype(np.uint8))
    faces = None
    f = els.get("face")
    if f is not None:
        key = "vertex_indices" if "vertex_indices" in f else ("vertex_index" if "vertex_index" in f else None)
        if key is not None:
            faces = torch.from_numpy(_faces_to_triangles(f[key]))
    return PlyData(points, normals, colors, faces)


def write_ply(
    path: str | os.PathLike,
    points: Tensor,
    normals: Tensor | None = None,
    colors: Tensor | None = None,
    faces: Tensor | None = None,
    format: str = "binary_little_endian",
) -> None:
    """Writes a point cloud (and optional triangles) to a PLY file.

    Args:
        path: output file path (parent folders must exist).
        points: (N, 3) float tensor; written as ``float`` for float32 and lower, ``double`` for float64.
        normals: optional (N, 3) float normals.
        colors: optional (N, 3) colours, uint8 (0-255) or float in [0, 1].
        faces: optional (F, 3) integer vertex indices.
        format: ``"ascii"``, ``"binary_little_endian"`` or ``"binary_big_endian"``.

    Raises:
        ValueError: wrong shapes or an unknown format.
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if not isinstance(points, Tensor) or points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must be a (N, 3) tensor, got {getattr(points, 'shape', type(points))}")
    n = points.shape[0]
    ftype = "f8" if points.dtype == torch.float64 else "f4"
    cols: list[tuple[str, str, np.ndarray]] = []
    p = points.detach().cpu().double().numpy()
    cols += [(k, ftype, p[:, i]) for i, k in enumerate("xyz")]
    if normals is not None:
        if normals.shape != points.shape:
            raise ValueError(f"normals must have shape {tuple(points.shape)}, got {tuple(normals.shape)}")
        nn_ = normals.detach().cpu().double().numpy()
        cols += [(k, ftype, nn_[:, i]) for i, k in enumerate(("nx", "ny", "nz"))]
    if colors is not None:
        if colors.shape != points.shape:
            raise ValueError(f"colors must have shape {tuple(points.shape)}, got {tuple(colors.shape)}")
        c = colors.detach().cpu()
        c = (c.double().clamp(0, 1) * 255).round() if c.is_floating_point() else c
        c = c.numpy().astype(np.uint8)
        cols += [(k, "u1", c[:, i]) for i, k in enumerate(("red", "green", "blue"))]
    if faces is not None and (faces.ndim != 2 or faces.shape[-1] != 3 or faces.is_floating_point()):
        raise ValueError(f"faces must be an integer (F, 3) tensor, got {tuple(faces.shape)} {faces.dtype}")
    names = {"f4": "float", "f8": "double", "u1": "uchar"}
    header = ["ply", f"format {format} 1.0", "comment written by torch3dv", f"element vertex {n}"]
    header += [f"property {names[t]} {k}" for k, t, _ in cols]
    if faces is not None:
        header += [f"element face {faces.shape[0]}", "property list uchar int vertex_indices"]
    header.append("end_header")
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        if format == "ascii":
            fmt = " ".join("%.9g" if t == "f4" else ("%.17g" if t == "f8" else "%d") for _, t, _ in cols)
            values = [a.tolist() for _, _, a in cols]
            lines = [fmt % row for row in zip(*values)]
            fh.write(("\n".join(lines) + ("\n" if lines else "")).encode("ascii"))
            if faces is not None:
                fl = faces.detach().cpu().numpy()
                fh.write("".join(f"3 {a} {b} {c}\n" for a, b, c in fl).encode("ascii"))
        else:
            e = "<" if format == "binary_little_endian" else ">"
            dt = np.dtype([(k, e + t) for k, t, _ in cols])
            arr = np.empty(n, dtype=dt)
            for k, _, a in cols:
                arr[k] = a
            fh.write(arr.tobytes())
            if faces is not None:
                fdt = np.dtype([("n", "u1"), ("v", e + "i4", (3,))])
                farr = np.empty(faces.shape[0], dtype=fdt)
                farr["n"] = 3
                farr["v"] = faces.detach().cpu().numpy()
                fh.write(farr.tobytes())
