"""Builds this folder: small images in the layouts ImageNet-style data sets contain, and reference.safetensors with
what PIL makes of them (Image.open(f).convert('RGB') as NAME.pixels, the ADM center crop as NAME.crop<size>).

Run from this folder with Pillow and NumPy installed (made with Pillow 13.0.0, libjpeg-turbo 2.1.5's TurboJPEG
for the YCCK file). The Swift tests only read the files; they never run this script.
"""
import ctypes, io, json, struct, zlib
import numpy as np
from PIL import Image

rng = np.random.default_rng(17)


def smooth(h, w, channels):
    """Gradients plus waves plus a little noise: smooth enough to resample, rough enough to test rounding."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        v = 128 + 90 * np.sin(x / (3 + c) + y / 5) * np.cos(y / (4 + c)) + 30 * (x / w - y / h)
        planes.append(v + rng.normal(0, 6, (h, w)))
    return np.clip(np.stack(planes, -1), 0, 255).round().astype(np.uint8)


def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)


def raw_png(w, h, depth, color_type, rows_of, interlace=False, plte=None, trns=None):
    """A PNG written by hand, for layouts PIL does not write. rows_of(x0, y0, dx, dy) -> packed rows of that grid."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    stream = b''
    for p in (passes if interlace else [(0, 0, 1, 1)]):
        rows = rows_of(*p)
        if rows and rows[0]:
            stream += b''.join(b'\x00' + r for r in rows)
    out = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, color_type, 0, 0, int(interlace)))
    if plte: out += chunk(b'PLTE', plte)
    if trns: out += chunk(b'tRNS', trns)
    return out + chunk(b'IDAT', zlib.compress(stream)) + chunk(b'IEND', b'')


def pack(values, depth):
    if depth == 8: return bytes(int(v) for v in values)
    if depth == 16: return b''.join(struct.pack('>H', int(v)) for v in values)
    bits = ''.join(format(int(v), '0%db' % depth) for v in values)
    bits += '0' * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


def grid_rows(array, depth):
    def rows_of(x0, y0, dx, dy):
        sub = array[y0::dy, x0::dx]
        return [pack(row.reshape(-1), depth) for row in sub] if sub.size else []
    return rows_of


files = {}
# JPEG: gray; CMYK as PIL writes it (Adobe marker, inverted samples); YCCK as libjpeg-turbo writes CMYK;
# RGB progressive with 4:2:2 chroma at odd sizes (the fixture images are baseline 4:2:0).
for name, mode, array, options in [('gray.jpg', 'L', smooth(17, 23, 1)[..., 0], {}),
                                   ('cmyk.jpg', 'CMYK', smooth(14, 20, 4), {}),
                                   ('progressive422.jpg', 'RGB', smooth(21, 19, 3), {'progressive': True, 'subsampling': 1})]:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, 'JPEG', quality=90, **options)
    files[name] = buffer.getvalue()
tj = ctypes.CDLL('libturbojpeg.so.0')
tj.tjInitCompress.restype = ctypes.c_void_p
handle = ctypes.c_void_p(tj.tjInitCompress())
cmyk = np.ascontiguousarray(smooth(18, 22, 4))
jpeg, size = ctypes.POINTER(ctypes.c_ubyte)(), ctypes.c_ulong(0)
assert tj.tjCompress2(handle, cmyk.ctypes.data_as(ctypes.c_void_p), 22, 0, 18, 11, ctypes.byref(jpeg), ctypes.byref(size), 2, 90, 0) == 0
files['ycck.jpg'] = bytes(jpeg[:size.value])

# PNG: palette at 4 bits with alpha; gray at 2 bits; 16-bit RGBA; gray+alpha; interlaced RGB; an RGB image for crops
# of every kind (halvings of odd sides, downscale, upscale).
palette = rng.integers(0, 256, 3 * 12, dtype=np.uint8).tobytes()
indices = rng.integers(0, 13, (15, 26))  # 12 is past the palette's end: PIL gives black
files['palette4.png'] = raw_png(26, 15, 4, 3, grid_rows(indices, 4), plte=palette, trns=bytes([0, 90, 255, 7]))
files['gray2.png'] = raw_png(13, 11, 2, 0, grid_rows(rng.integers(0, 4, (11, 13)), 2))
files['rgba16.png'] = raw_png(18, 16, 16, 6, grid_rows(smooth(16, 18, 4).astype(np.uint16) * 257 + rng.integers(0, 257, (16, 18, 4)), 16))
buffer = io.BytesIO()
Image.fromarray(smooth(19, 17, 2), 'LA').save(buffer, 'PNG')
files['la.png'] = buffer.getvalue()
files['interlaced.png'] = raw_png(27, 22, 8, 2, grid_rows(smooth(22, 27, 3), 8), interlace=True)
buffer = io.BytesIO()
Image.fromarray(smooth(23, 37, 3), 'RGB').save(buffer, 'PNG')
files['noise.png'] = buffer.getvalue()


def center_crop_dhariwal(image, size):
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    array = np.array(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


tensors = {}
for name, data in sorted(files.items()):
    with open(name, 'wb') as f:
        f.write(data)
    rgb = Image.open(name).convert('RGB')
    tensors[name + '.pixels'] = np.array(rgb)
    for size in ([4, 7, 11, 32] if name == 'noise.png' else [8]):
        tensors['%s.crop%d' % (name, size)] = center_crop_dhariwal(rgb, size)

header, blobs, offset = {'__metadata__': {'note': 'PIL %s: decoded RGB pixels and ADM center crops' % Image.__version__}}, [], 0
for key, array in tensors.items():
    blob = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    header[key] = {'dtype': 'U8', 'shape': list(array.shape), 'data_offsets': [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
text = json.dumps(header).encode()
text += b' ' * (-len(text) % 8)
with open('reference.safetensors', 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))
