"""Bring your own data: images plus optional masks (PNG or NPY), labels from a CSV.

Layout::

    root/labels.csv        filename,label            (one row per image)
    root/images/<filename> PNG (grey or RGB) or NPY ((H, W) or (C, H, W))
    root/masks/<filename>  optional; same name (or stem, unless another listed image has that name) as
                           the image, non-zero = lesion (a PNG mask's alpha channel is no value:
                           transparent pixels, by alpha or a transparent index or colour, are background);
                           an image labelled 0 (the normal class) has an empty mask

A palette PNG image is read by its colours (RGB; RGBA where it has transparency; one grey
channel, with its alpha, where every colour is grey), a palette mask by its indices.  The
label file may start with a byte-order mark (as spreadsheets write it).

Items are ``(image (C, H, W) float32, label int64, mask (H, W) bool)``; without masks
the mask is all False and ``has_masks`` is False.  Images are normalised per channel
(zero mean, unit variance).

Every image is checked when the dataset is built (``scan=True``), before any training:
it must be readable as an image (NPY files are read with ``allow_pickle=False``: a file
holding Python objects is refused, never unpickled), hold only finite values, and share
one size and channel count with the others; labels must be integers in
``0 .. num_classes - 1``; with a ``masks`` folder, every image must have its mask, a
readable image of the image's height and width.  Each error names the file and the fix.
(Without the scan, these checks run when an item is read.)  :meth:`FolderDataset.image_label`
reads an item without its mask (what training reads, through ``labels_only``).

The scan also notes each image's pixels (a digest of the array read, and a sketch of the
image as the model sees it), so that :meth:`FolderDataset.images_shared_with` finds the images two
sets have in common however they are stored (a copy, a link, the same array in another file,
the same picture at another scale or offset); ``build_datasets("folder")`` refuses a
validation set that shares an image with the training set.
"""
from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["FolderDataset"]

_EXTENSIONS = (".png", ".npy")


def _read_array(path: str, palette_as_colours: bool = True) -> np.ndarray:
    """The file's pixels as an array (PNG: ``(H, W)`` or ``(H, W, C)``; NPY: as stored);
    ValueError naming the file when it is not a readable image of numbers.  A palette PNG
    stores indices into its colour table: an image is read by its colours (RGB, or RGBA with
    transparency; its indices are in no order of brightness), a mask
    (``palette_as_colours=False``) by its indices, whose 0 is the background."""
    if path.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:
            # numpy's own words tell the cases apart: an object array, a file without the
            # NumPy header (which numpy would only try as a pickle), or a damaged array
            if "Object arrays cannot be loaded" in str(err):
                raise ValueError(f"{path!r} is not a NumPy array of numbers ({err}); Python objects are never "
                                 f"loaded: save a plain numeric array with numpy.save") from None
            if "pickled" in str(err):
                raise ValueError(f"{path!r} is not a .npy file: it lacks the NumPy header (numpy would read it "
                                 f"only as a pickle, which is never loaded); save a numeric array with "
                                 f"numpy.save") from None
            raise ValueError(f"{path!r} cannot be read as a .npy array ({err}); save it again with numpy.save") \
                from None
        except (OSError, EOFError) as err:
            raise ValueError(f"{path!r} cannot be read as a .npy array ({err}); save it again with numpy.save") \
                from None
        except MemoryError as err:  # a header declaring more than memory holds (was a traceback: ca_rev261)
            raise ValueError(f"{path!r} cannot be read as a .npy array: its header declares more data than memory "
                             f"holds ({err}); save it again with numpy.save, or downsample the image") from None
        if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) \
                or np.iscomplexobj(arr):
            raise ValueError(f"{path!r} holds {getattr(arr, 'dtype', type(arr))} data, not real numbers; save a "
                             f"real numeric array")
        return arr
    from PIL import Image, UnidentifiedImageError

    _check_png_depth(path)
    try:
        # PNG alone: Pillow would otherwise hand a .png holding PostScript to Ghostscript, and
        # decode a JPEG or TIFF of that name (ca_rev125)
        with Image.open(path, formats=["PNG"]) as im:
            if palette_as_colours and im.mode in ("P", "PA"):
                alpha = im.mode == "PA" or "transparency" in im.info
                arr = np.asarray(im.convert("RGBA" if alpha else "RGB"), dtype=np.float32)
                if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
                    # a grey palette (pngquant, an 8-bit export): one channel, as the grey PNGs beside it
                    # (read as RGB, a grey folder holding one was refused for its channel count: a review)
                    arr = arr[..., [0, 3]] if alpha else arr[..., 0]
            elif not palette_as_colours and im.mode in ("LA", "PA", "RGBA"):
                # a mask's alpha is no value: an editor's opaque export (255 everywhere) made every
                # pixel a lesion (a review); a pixel is a lesion where its colour (or index) is
                # non-zero and it is not transparent
                both = np.asarray(im, dtype=np.float32)
                arr = np.where(both[..., -1:] > 0, both[..., :-1], 0.0)
                arr = arr[..., 0] if arr.shape[-1] == 1 else arr
            elif not palette_as_colours and im.mode in ("P", "L", "RGB") and "transparency" in im.info:
                # a transparent index or colour (tRNS) is background too: a palette mask whose
                # transparent index is not 0 had made every background pixel a lesion (ca_rev261)
                values = np.asarray(im, dtype=np.float32)
                opaque = np.asarray(im.convert("RGBA"))[..., 3] > 0
                arr = np.where(opaque[..., None] if values.ndim == 3 else opaque, values, 0.0)
            else:
                arr = np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            MemoryError) as err:  # (MemoryError: an image too large to decode was a traceback, ca_rev261)
        # (DecompressionBombError, an image over Pillow's pixel limit, is no OSError: it was a traceback)
        raise ValueError(f"{path!r} is not a readable PNG image ({err}); convert it to PNG or NPY") from None
    if arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)  # PNG: (H, W, C) -> (C, H, W)
    return arr


#: PNG colour types with more than one channel (grey + alpha, RGB, RGBA): at 16 bits per
#: channel Pillow reads them as 8-bit images, keeping the high bytes alone.
_PNG_MULTICHANNEL = {4: "grey + alpha", 2: "RGB", 6: "RGBA"}


def _check_png_depth(path: str) -> None:
    """ValueError for a PNG of 16 bits per channel and several channels: Pillow reads it at 8
    bits, the low byte of every value lost (values 0 to 199 read as 0; a mask's lesion read as
    empty: ca_rev125).  16-bit grey PNGs are read exactly, and are not refused."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return  # (the reader says why it cannot be read)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16 \
            and head[25] in _PNG_MULTICHANNEL:
        raise ValueError(f"{path!r} is a 16-bit {_PNG_MULTICHANNEL[head[25]]} PNG, which is read at 8 bits per "
                         f"channel (the low byte of every value lost); save it as NPY, or as 8-bit or 16-bit grey "
                         f"PNGs")


def _as_chw(arr: np.ndarray, path: str) -> np.ndarray:
    source = np.asarray(arr)
    if source.dtype.kind == "f" and np.isfinite(source).all() and not np.isfinite(source.astype(np.float32)).all():
        raise ValueError(f"{path!r} holds values beyond float32's range (|x| > 3.4e38), which images are read "
                         f"in; rescale the image")
    arr = source.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and path.lower().endswith(".npy") and arr.shape[-1] in (3, 4) and arr.shape[0] not in (3, 4):
        arr = np.moveaxis(arr, -1, 0)  # an (H, W, C) array
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"{path!r}: expected a (H, W) or (C, H, W) image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path!r} contains NaN or Inf values; replace them (e.g. numpy.nan_to_num) or drop the "
                         f"image from the label file")
    return arr


def _normalised(arr: np.ndarray) -> torch.Tensor:
    """``(C, H·W)`` float64: each channel of a ``(C, H, W)`` image less its mean, over its standard
    deviation (at least 1e-6), as the model sees it.  In float64: float32 sums of values near its
    range overflow (every pixel came out NaN); one pixel has no spread (the unbiased std of one
    value is NaN): it is only centred."""
    image = torch.from_numpy(arr).double().flatten(1)
    mean = image.mean(1, keepdim=True)
    std = image.std(1, keepdim=True) if image.shape[1] > 1 else torch.zeros_like(mean)
    return (image - mean) / std.clamp(min=1e-6)


#: How close two images must be as the model sees them (normalised per channel: the largest
#: difference of a z-score) to be one picture, in :meth:`FolderDataset.images_shared_with`.
SAME_PICTURE_ATOL = 1e-3


def _digest(arr: np.ndarray) -> bytes:
    """A digest of an image's values as stored: a copy, a link, the array saved again."""
    return hashlib.blake2b(arr.tobytes(), digest_size=16).digest()


def _sketch(arr: np.ndarray) -> np.ndarray:
    """The image as the model sees it (:func:`_normalised`), averaged onto 4x4 cells per channel,
    ``(C·16,)`` float64: a filter for pictures stored again at another scale or offset (a PNG
    saved as an ``.npy`` divided by 255), which the full comparison then decides (ca_rev143).
    Digests of values rounded to a grid had missed such a copy wherever one value sat at a
    boundary, and digests of the pixels' order wherever rounding tied two (ca_rev145)."""
    c, h, w = arr.shape
    seen = _normalised(arr).view(1, c, h, w)
    return torch.nn.functional.adaptive_avg_pool2d(seen, (min(4, h), min(4, w))).reshape(-1).numpy()


class FolderDataset(Dataset):
    """See the module docstring.

    Args:
        root: the folder.
        labels_csv: CSV file name inside ``root`` (columns ``filename``, ``label``).
        image_dir, mask_dir: sub-folders; ``mask_dir=None`` disables masks even if present.
        num_classes: labels must lie in ``0 .. num_classes - 1``.
        scan: read every image once now and check it (see the module docstring).
    """

    def __init__(self, root: str, labels_csv: str = "labels.csv", image_dir: str = "images",
                 mask_dir: str | None = "masks", num_classes: int = 2, scan: bool = True):
        self.root = root
        csv_path = os.path.join(root, labels_csv)
        if not os.path.exists(csv_path):
            raise ValueError(f"label file {csv_path!r} does not exist (columns: filename,label)")
        try:
            f = open(csv_path, newline="", encoding="utf-8-sig")
        except OSError as err:  # a folder of that name, no permission: was a traceback (ca_rev261)
            raise ValueError(f"label file {csv_path!r} cannot be read ({err.strerror or err}); it must be a "
                             f"readable CSV file (columns: filename,label)") from None
        try:
            with f:  # utf-8-sig: a spreadsheet's byte-order mark
                reader = csv.DictReader(f)
                missing = {"filename", "label"} - set(reader.fieldnames or [])
                if missing:
                    raise ValueError(f"{csv_path!r} lacks column(s) {sorted(missing)}; expected filename,label")
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{csv_path!r} is not a readable CSV file ({err}); expected columns filename,label") \
                from None
        if not rows:
            raise ValueError(f"empty dataset: {csv_path!r} lists no images")
        self.items, seen = [], set()
        for line, row in enumerate(rows, start=2):
            name = (row.get("filename") or "").strip()
            where = f"{labels_csv} line {line}"
            if not name.lower().endswith(_EXTENSIONS):
                raise ValueError(f"{name!r} ({where}): images must be PNG or NPY")
            path = os.path.join(root, image_dir, name)
            same = os.path.normcase(os.path.realpath(path))  # 'a.png' and './a.png' are one image
            if same in seen:
                raise ValueError(f"{name!r} is listed twice in {labels_csv} (line {line}: the file of an earlier "
                                 f"line); list every image once")
            seen.add(same)
            if not os.path.isfile(path):
                raise ValueError(f"image file {path!r} listed in {labels_csv} does not exist")
            text = (row.get("label") or "").strip()
            try:
                label = int(text)
            except ValueError:
                raise ValueError(f"label of {name!r} must be an integer, got {row.get('label')!r} ({where}); "
                                 f"use 0 .. {num_classes - 1}") from None
            if not 0 <= label < num_classes:
                raise ValueError(f"label of {name!r} is {label} ({where}); labels must be 0 .. {num_classes - 1} "
                                 f"for {num_classes} classes")
            self.items.append((path, label, name))
        self._path_of = {name: path for path, _, name in self.items}  # names are unique (seen)
        self.mask_root = os.path.join(root, mask_dir) if mask_dir else None
        self.has_masks = bool(self.mask_root and os.path.isdir(self.mask_root))
        self.image_shape: tuple[int, ...] | None = None
        self._mask_paths: dict[str, str] = {}
        # each scanned image's (file name, digest of its array, sketch of it as the model sees it),
        # in the label file's order
        self._pixels: list[tuple[str, bytes, np.ndarray]] = []
        self.scanned = scan
        if scan:
            for path, label, name in self.items:
                image = self._load_image(path)
                flat = image.reshape(image.shape[0], -1)
                # a blank slice, constant in every channel (the model sees zeros), may occur in any set
                # (one constant per channel at other levels had been called the same image: ca_rev145)
                if not bool((flat.min(1) == flat.max(1)).all()):
                    self._pixels.append((name, _digest(image), _sketch(image)))
                if self.has_masks:  # every mask found and of the image's size now, not in the middle of training
                    self._load_mask(name, image.shape[1:], label)

    def __len__(self) -> int:
        return len(self.items)

    def images_shared_with(self, other: FolderDataset) -> list[tuple[str, str]]:
        """``(name here, name in other)`` of every image whose pixels both sets hold (a copy, a
        link, or the same array saved again), or that the model sees alike (the same picture at
        another scale or offset per channel: within :data:`SAME_PICTURE_ATOL` after the
        normalisation, judged on the full images of the pairs whose sketches are that close;
        blank images, constant in every channel, are not counted), in this set's order.  Both
        sets must have been scanned (ValueError otherwise)."""
        if not (self.scanned and other.scanned):
            raise ValueError("images_shared_with compares the pixels that the scan notes: build both sets with "
                             "scan=True")
        theirs: dict[bytes, str] = {}
        for name, digest, _ in other._pixels:
            theirs.setdefault(digest, name)
        # every copy here (one entry per name: two copies of one training image were counted once, ca_rev128)
        found = {name: theirs[digest] for name, digest, _ in self._pixels if digest in theirs}
        rest = [(name, sketch) for name, _, sketch in self._pixels if name not in found]
        # (sets of other image shapes hold no picture in common: their sketches differ in length, ca_rev148)
        if rest and other._pixels and self.image_shape == other.image_shape:
            mine = torch.from_numpy(np.stack([sketch for _, sketch in rest]))
            their_sketches = torch.from_numpy(np.stack([sketch for _, _, sketch in other._pixels]))
            for start in range(0, len(rest), 256):  # (a block of pairs at a time: memory stays bounded)
                near = torch.cdist(mine[start:start + 256], their_sketches, p=float("inf")) <= SAME_PICTURE_ATOL
                for i, j in torch.nonzero(near).tolist():
                    name, their_name = rest[start + i][0], other._pixels[j][0]
                    if name not in found and self._same_picture(name, other, their_name):
                        found[name] = their_name
        return [(name, found[name]) for name, _, _ in self._pixels if name in found]

    def _same_picture(self, name: str, other: FolderDataset, their_name: str) -> bool:
        """Whether this set's image ``name`` and ``other``'s ``their_name`` are one input to the
        model: within :data:`SAME_PICTURE_ATOL` everywhere, normalised (read again: the scan keeps
        no images)."""
        mine, theirs = self._normalised_image(name), other._normalised_image(their_name)
        return mine.shape == theirs.shape and bool(((mine - theirs).abs() <= SAME_PICTURE_ATOL).all())

    def _normalised_image(self, name: str) -> torch.Tensor:
        return _normalised(self._load_image(self._path_of[name]))

    def _mask_path(self, name: str) -> str:
        if name in self._mask_paths:
            return self._mask_paths[name]
        assert self.mask_root is not None
        stem = os.path.splitext(name)[0]
        for candidate in (name, stem + ".png", stem + ".npy"):
            if candidate != name and candidate in self._path_of:
                continue  # the mask of the listed image of that name (a.npy had been given a.png's: ca_rev261)
            path = os.path.join(self.mask_root, candidate)
            if os.path.isfile(path):
                self._mask_paths[name] = path
                return path
        raise ValueError(f"mask file for {name!r} is missing in {self.mask_root!r} (looked for {stem}.png/.npy); add "
                         f"it, or move the masks folder away to use the images without masks")

    def _load_mask(self, name: str, size, label: int) -> torch.Tensor:
        """``(H, W)`` bool mask of image ``name``, checked against the image's ``size`` ``(H, W)`` and its
        ``label`` (an image of the normal class, 0, has no lesion)."""
        mask_path = self._mask_path(name)
        raw = np.asarray(_read_array(mask_path, palette_as_colours=False)).astype(np.float64)
        if not np.isfinite(raw).all():  # NaN was read as background before
            raise ValueError(f"mask of {name!r} ({mask_path!r}) holds NaN or Inf values; a mask is 0 for background "
                             f"and non-zero for lesion")
        mask = torch.from_numpy(raw != 0)  # non-zero = lesion, a negative value too (255 saved as int8 is -1)
        if mask.ndim == 3:
            # PNG masks arrive channel-first; an NPY mask may be (H, W, C) or (C, H, W)
            mask = mask.any(-1) if mask_path.lower().endswith(".npy") and mask.shape[-1] in (3, 4) \
                else mask.any(0)
        if tuple(mask.shape) != tuple(size):
            raise ValueError(f"mask of {name!r} ({mask_path!r}) has shape {tuple(mask.shape)}, the image "
                             f"{tuple(size)}; masks must have the image's height and width")
        if label == 0 and bool(mask.any()):  # explain would pass over the lesion and score the label-1 images alone
            raise ValueError(f"mask of {name!r} ({mask_path!r}) marks {int(mask.sum())} lesion pixel(s) but its "
                             f"label is 0, the normal class; a mask marks the lesion of a lesion image: correct "
                             f"the label, or save an empty mask (all 0)")
        return mask

    def _load_image(self, path: str) -> np.ndarray:
        """``(C, H, W)`` float32 of one image, checked; the first image fixes the shape."""
        arr = _as_chw(_read_array(path), path)
        if self.image_shape is None:
            self.image_shape, self._first = arr.shape, path
        elif arr.shape != self.image_shape:
            c, h, w = arr.shape
            c0, h0, w0 = self.image_shape
            raise ValueError(f"{path!r} is {c}x{h}x{w} (channels x height x width) but {self._first!r} is "
                             f"{c0}x{h0}x{w0}: every image must have one size and channel count; resize or convert "
                             f"the images to one shape")
        return arr

    def image_label(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image, label)`` of item ``index``, normalised as in ``dataset[index]``; the mask
        is not read."""
        path, label, _ = self.items[index]
        # in float64: float32 sums of values near its range overflow (every pixel came out NaN);
        # one pixel has no spread (the unbiased std of one value is NaN): it is only centred
        arr = self._load_image(path)
        return _normalised(arr).float().view(arr.shape), torch.tensor(label)

    def __getitem__(self, index: int):
        image, label = self.image_label(index)
        if self.has_masks:
            mask = self._load_mask(self.items[index][2], image.shape[1:], self.items[index][1])
        else:
            mask = torch.zeros(image.shape[1:], dtype=torch.bool)
        return image, label, mask
