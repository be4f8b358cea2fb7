"""Decode ``sensor_msgs/CompressedImage`` payloads without ROS: what image_transport's plugins publish.

* ``compressed`` (colour): ``format`` is ``"bgr8; jpeg compressed bgr8"``, ``"rgb8; png compressed rgb8"``,
  ``"mono8; jpeg compressed mono8"`` or just ``"jpeg"`` / ``"png"``; ``data`` is a whole JPEG or PNG file.
* ``compressedDepth`` (compressed_depth_image_transport): ``format`` is ``"16UC1; compressedDepth png"`` or
  ``"32FC1; compressedDepth png"`` (older publishers: ``"... ; compressedDepth"``); ``data`` is a 12-byte
  ``ConfigHeader`` (int32 format, float32 depthQuantA, float32 depthQuantB, little endian) followed by a
  16-bit PNG. 16UC1 PNGs hold the raw millimetres; 32FC1 ones hold quantised inverse depth ``v``, with depth
  ``= depthQuantA / (v - depthQuantB)`` and 0 = no depth. The RVL variant (``compressedDepth rvl``) is refused
  with the reason (publish ``png``).

Every decoder returns fresh arrays and raises ValueError saying what is wrong with the payload.
"""
from __future__ import annotations

import struct
from typing import Tuple

import cv2
import numpy as np

CONFIG_HEADER = struct.Struct('<iff')        # compressed_depth_image_transport's ConfigHeader (12 bytes)
INV_DEPTH = 0                                # ConfigHeader.format of every depth image it writes
_MAGIC = {b'\xff\xd8\xff': 'jpeg', b'\x89PNG\r\n\x1a\n': 'png'}


def _bytes(data) -> np.ndarray:
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _container(payload: np.ndarray) -> str:
    head = payload[:8].tobytes()
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return ''


def decode_colour(format_text: str, data) -> np.ndarray:
    """JPEG / PNG ``CompressedImage`` → H x W x 3 uint8 RGB; ValueError for a corrupt or unknown payload."""
    payload = _bytes(data)
    if payload.size == 0:
        raise ValueError(f'compressed image ({format_text!r}) has no data')
    if 'compressedDepth' in format_text:
        raise ValueError(f'format {format_text!r} is a compressedDepth image, not a colour one: remap the depth '
                         "topic to 'depth' (depth_transport: compressedDepth)")
    kind = _container(payload)
    if not kind:
        raise ValueError(f'compressed image ({format_text!r}, {payload.size} bytes) is neither JPEG nor PNG '
                         f'(starts with {payload[:4].tobytes()!r})')
    decoded = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ValueError(f'corrupt {kind} payload ({payload.size} bytes, format {format_text!r}): OpenCV cannot '
                         'decode it')
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    if decoded.dtype != np.uint8:
        raise ValueError(f'{kind} payload holds {decoded.dtype} pixels; expected 8-bit colour or grey')
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    # OpenCV decodes to BGR(A) whatever the format string says the publisher's source encoding was
    return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def _depth_encoding(format_text: str) -> Tuple[str, str]:
    encoding, _, rest = format_text.partition(';')
    encoding, rest = encoding.strip(), rest.strip()
    if 'compressedDepth' not in rest and rest:
        raise ValueError(f'format {format_text!r} is not compressedDepth (a colour "compressed" image on the depth '
                         "input? set depth_transport: compressedDepth only for compressedDepth topics)")
    codec = rest.replace('compressedDepth', '').strip() or 'png'
    return encoding, codec


def decode_depth(format_text: str, data, depth_scale: float = 0.001) -> np.ndarray:
    """``compressedDepth`` payload → H x W float32 metres, 0 where invalid (see the module docstring)."""
    encoding, codec = _depth_encoding(format_text)
    if codec != 'png':
        raise ValueError(f'compressedDepth codec {codec!r} ({format_text!r}) is not supported: set the publisher\'s '
                         'format parameter to png')
    if encoding not in ('16UC1', 'mono16', '32FC1'):
        raise ValueError(f'compressedDepth encoding {encoding!r} ({format_text!r}); expected 16UC1 or 32FC1')
    payload = _bytes(data)
    if payload.size <= CONFIG_HEADER.size:
        raise ValueError(f'compressedDepth payload of {payload.size} bytes is shorter than its '
                         f'{CONFIG_HEADER.size}-byte header plus a PNG')
    _, quant_a, quant_b = CONFIG_HEADER.unpack(payload[:CONFIG_HEADER.size].tobytes())
    image = payload[CONFIG_HEADER.size:]
    if _container(image) != 'png':
        raise ValueError(f'compressedDepth payload ({format_text!r}) has no PNG after its {CONFIG_HEADER.size}-byte '
                         'header (a raw PNG without the header? publish with compressed_depth_image_transport)')
    raw = cv2.imdecode(image, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
        raise ValueError(f'corrupt compressedDepth PNG ({image.size} bytes, {format_text!r}): expected a 16-bit '
                         'single-channel image')
    if encoding == '32FC1':
        if not (np.isfinite(quant_a) and np.isfinite(quant_b)) or quant_a == 0:
            raise ValueError(f'compressedDepth 32FC1 header has bad quantisation parameters A={quant_a}, B={quant_b}')
        values = raw.astype(np.float32)
        with np.errstate(divide='ignore', invalid='ignore'):
            depth = np.float32(quant_a) / (values - np.float32(quant_b))
        depth[raw == 0] = 0.0
    else:
        depth = raw.astype(np.float32) * np.float32(depth_scale)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def encode_colour(rgb: np.ndarray, kind: str = 'jpeg', quality: int = 95) -> Tuple[str, bytes]:
    """H x W x 3 uint8 RGB → (format, data) as image_transport's ``compressed`` plugin publishes them."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if kind == 'jpeg' else []
    ok, data = cv2.imencode('.jpg' if kind == 'jpeg' else '.png', bgr, params)
    if not ok:
        raise ValueError(f'could not encode {kind}')
    return f'bgr8; {kind} compressed bgr8', data.tobytes()


def encode_depth(depth_m: np.ndarray, encoding: str = '16UC1', depth_max: float = 10.0,
                 depth_quantization: float = 100.0) -> Tuple[str, bytes]:
    """H x W metres → (format, data) as compressed_depth_image_transport's png codec writes them.

    16UC1: millimetres; 32FC1: inverse depth quantised with its defaults (depth_max 10 m, quantization 100).
    """
    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float32))
    if encoding == '16UC1':
        raw = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
        raw[depth > depth_max] = 0
        header = CONFIG_HEADER.pack(INV_DEPTH, 0.0, 0.0)
    elif encoding == '32FC1':
        quant_a = np.float32(depth_quantization * (depth_quantization + 1.0))
        quant_b = np.float32(1.0 - quant_a / depth_max)
        with np.errstate(divide='ignore'):
            inverse = quant_a / depth + quant_b
        raw = np.where((depth > 0) & (depth < depth_max), inverse, 0).astype(np.uint16)
        header = CONFIG_HEADER.pack(INV_DEPTH, float(quant_a), float(quant_b))
    else:
        raise ValueError(f'encoding must be 16UC1 or 32FC1, got {encoding!r}')
    ok, png = cv2.imencode('.png', raw)
    if not ok:
        raise ValueError('could not encode the depth PNG')
    return f'{encoding}; compressedDepth png', header + png.tobytes()
