"""Pictures of panoptic predictions: colour overlays and prediction | ground-truth pairs.

Pure numpy + PIL, so inference and the trainer's demo can draw without TensorFlow. Panoptic maps follow the project
encoding (panoptic = semantic * panoptic_label_divisor + instance; semantic == ignore_label is void). Each class
takes its colour from the dataset descriptor's colormap; instances of one thing class get a deterministic shade of
that colour, so the same instance id always looks the same and neighbouring instances are told apart.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deeplab_axial.data.dataset import DatasetDescriptor

_BOUNDARY_COLOR = (255, 255, 255)
_TEXT_COLOR = (255, 255, 255)
_TEXT_BACKGROUND = (0, 0, 0)
# Largest shade change per channel; kept well below the gap between typical colormap entries.
_MAX_SHADE = 48


def _validate(image: Optional[np.ndarray], panoptic: np.ndarray) -> None:
    if panoptic.ndim != 2:
        raise ValueError(f'`panoptic` must be [height, width]. Received shape: {panoptic.shape}')
    if image is not None:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'`image` must be [height, width, 3]. Received shape: {image.shape}')
        if image.shape[:2] != panoptic.shape:
            raise ValueError(f'`image` {image.shape[:2]} and `panoptic` {panoptic.shape} must have the same size')


def instance_shade(instance_id: int) -> np.ndarray:
    """A deterministic per-channel offset in [-_MAX_SHADE, _MAX_SHADE] for one instance id.

    Instance 1 keeps the class colour; higher ids walk a fixed integer hash, so shades do not depend on how many
    instances an image has or on the order they are drawn.
    """
    if instance_id <= 1:
        return np.zeros(3, np.int32)
    h = (instance_id * 2654435761) & 0xFFFFFFFF  # Knuth's multiplicative hash.
    steps = np.array([(h >> 0) & 0xFF, (h >> 8) & 0xFF, (h >> 16) & 0xFF], np.int32)
    return (steps * (2 * _MAX_SHADE) // 255 - _MAX_SHADE).astype(np.int32)


def _label_colors(labels: np.ndarray, descriptor: DatasetDescriptor) -> Tuple[np.ndarray, np.ndarray]:
    """[num_labels, 3] int colour and [num_labels] validity (False on void) of each distinct panoptic label."""
    divisor = descriptor.panoptic_label_divisor
    colormap = np.asarray(descriptor.colormap, np.int32).reshape(-1, 3)
    things = set(descriptor.thing_classes)
    label_colors = np.zeros((len(labels), 3), np.int32)
    label_valid = np.zeros(len(labels), bool)
    for i, label in enumerate(labels.tolist()):
        semantic, instance = divmod(label, divisor)
        if semantic == descriptor.ignore_label or not 0 <= semantic < len(colormap):
            continue
        color = colormap[semantic]
        if semantic in things:
            color = color + instance_shade(instance)
        label_colors[i] = np.clip(color, 0, 255)
        label_valid[i] = True
    return label_colors, label_valid


def colorize_panoptic(panoptic: np.ndarray, descriptor: DatasetDescriptor) -> Tuple[np.ndarray, np.ndarray]:
    """Colours a panoptic map.

    Args:
      panoptic: [height, width] integer panoptic labels.
      descriptor: dataset whose colormap, ignore label, thing classes and divisor apply.

    Returns:
      colors: [height, width, 3] uint8 colour per pixel (0 on void).
      valid: [height, width] bool, False on void pixels.
    """
    _validate(None, panoptic)
    labels, inverse = np.unique(panoptic, return_inverse=True)
    inverse = inverse.reshape(panoptic.shape)
    label_colors, label_valid = _label_colors(labels, descriptor)
    return label_colors[inverse].astype(np.uint8), label_valid[inverse]


def segment_boundaries(panoptic: np.ndarray) -> np.ndarray:
    """[height, width] bool, True on pixels whose right or lower neighbour has another panoptic label."""
    boundary = np.zeros(panoptic.shape, bool)
    horizontal = panoptic[:, 1:] != panoptic[:, :-1]
    vertical = panoptic[1:, :] != panoptic[:-1, :]
    boundary[:, :-1] |= horizontal
    boundary[:-1, :] |= vertical
    return boundary


def _label_anchor(mask: np.ndarray) -> Tuple[int, int]:
    """A pixel inside `mask` near its median position (the centroid can fall outside non-convex segments)."""
    rows, cols = np.nonzero(mask)
    mid_r, mid_c = np.median(rows), np.median(cols)
    nearest = np.argmin((rows - mid_r) ** 2 + (cols - mid_c) ** 2)
    return int(rows[nearest]), int(cols[nearest])


def _draw_class_names(canvas: Image.Image, labels: np.ndarray, inverse: np.ndarray, counts: np.ndarray,
                      descriptor: DatasetDescriptor, max_labels: int, min_area_fraction: float) -> None:
    """Writes class names on the largest segments; `labels`, `inverse`, `counts` come from np.unique."""
    min_area = min_area_fraction * inverse.size
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    drawn = 0
    for index in np.argsort(-counts, kind='stable'):
        if drawn == max_labels or counts[index] < min_area:
            break
        semantic = int(labels[index]) // descriptor.panoptic_label_divisor
        if semantic == descriptor.ignore_label or not 0 <= semantic < len(descriptor.class_names):
            continue
        row, col = _label_anchor(inverse == index)
        text = descriptor.class_names[semantic]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left, bottom - top
        x = min(max(col - width // 2, 0), max(canvas.width - width, 0))
        y = min(max(row - height // 2, 0), max(canvas.height - height, 0))
        draw.rectangle((x - 1, y - 1, x + width + 1, y + height + 1), fill=_TEXT_BACKGROUND)
        draw.text((x - left, y - top), text, fill=_TEXT_COLOR, font=font)
        drawn += 1


def overlay_panoptic(image: np.ndarray, panoptic: np.ndarray, descriptor: DatasetDescriptor, alpha: float = 0.5,
                     draw_boundaries: bool = True, max_labels: int = 8,
                     min_label_area_fraction: float = 0.002) -> np.ndarray:
    """Blends a coloured panoptic map onto its image.

    Void pixels keep the image unchanged. Segment boundaries are drawn in white, and the class names of the
    `max_labels` largest segments (each at least `min_label_area_fraction` of the image) are written on them.

    Args:
      image: [height, width, 3] uint8 RGB image.
      panoptic: [height, width] integer panoptic labels at the image's size.
      descriptor: dataset whose colormap, names and label encoding apply.
      alpha: colour weight in [0, 1]; 0 returns the image, 1 the flat colours.
      draw_boundaries: draw segment boundaries.
      max_labels: how many class names to write; 0 writes none.
      min_label_area_fraction: smallest segment (fraction of the image) that gets a name.

    Returns:
      [height, width, 3] uint8 RGB picture.
    """
    image = np.asarray(image)
    panoptic = np.asarray(panoptic)
    _validate(image, panoptic)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'`alpha` must be in [0, 1]. Received: {alpha}')
    labels, inverse, counts = np.unique(panoptic, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(panoptic.shape)
    label_colors, label_valid = _label_colors(labels, descriptor)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * label_colors[inverse].astype(np.float32)
    out = np.where(label_valid[inverse][..., None], np.round(blended), image).astype(np.uint8)
    if draw_boundaries:
        out[segment_boundaries(panoptic)] = _BOUNDARY_COLOR
    if max_labels > 0:
        canvas = Image.fromarray(out)
        _draw_class_names(canvas, labels, inverse, counts, descriptor, max_labels, min_label_area_fraction)
        out = np.asarray(canvas)
    return out


def side_by_side(pictures: Sequence[np.ndarray], titles: Sequence[str] = (), gap: int = 4) -> np.ndarray:
    """Places pictures left to right with `gap` black columns between them and optional titles at the top-left.

    Args:
      pictures: [height_i, width_i, 3] uint8 pictures; shorter ones are padded with black at the bottom.
      titles: one title per picture, or none.
      gap: width in pixels of the separator.

    Returns:
      [max height, sum of widths + gaps, 3] uint8 picture.
    """
    if not pictures:
        raise ValueError('`pictures` is empty')
    if titles and len(titles) != len(pictures):
        raise ValueError(f'`titles` needs one entry per picture ({len(pictures)}). Received: {len(titles)}')
    pictures = [np.asarray(p) for p in pictures]
    for p in pictures:
        if p.ndim != 3 or p.shape[2] != 3:
            raise ValueError(f'Every picture must be [height, width, 3]. Received shape: {p.shape}')
    height = max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    out = np.zeros((height, width, 3), np.uint8)
    offsets = []
    x = 0
    for p in pictures:
        out[:p.shape[0], x:x + p.shape[1]] = p
        offsets.append(x)
        x += p.shape[1] + gap
    if titles:
        canvas = Image.fromarray(out)
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default()
        for x, title in zip(offsets, titles):
            left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
            draw.rectangle((x, 0, x + right - left + 3, bottom - top + 3), fill=_TEXT_BACKGROUND)
            draw.text((x + 2 - left, 2 - top), title, fill=_TEXT_COLOR, font=font)
        out = np.asarray(canvas)
    return out


def prediction_vs_ground_truth(image: np.ndarray, panoptic_pred: np.ndarray, panoptic_gt: np.ndarray,
                               descriptor: DatasetDescriptor, alpha: float = 0.5) -> np.ndarray:
    """"prediction | ground truth" overlays of one image, side by side (twice the width plus a gap)."""
    return side_by_side([overlay_panoptic(image, panoptic_pred, descriptor, alpha),
                         overlay_panoptic(image, panoptic_gt, descriptor, alpha)],
                        titles=('prediction', 'ground truth'))
