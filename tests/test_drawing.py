"""Detections drawn onto pictures: one stable colour per class, sizes that follow the image, nothing fails.

Every check reads real pixels of images drawn by Pillow; nothing is mocked.
"""

from __future__ import annotations

import colorsys
import math
import os
import random
import subprocess
import sys
import time

import pytest
from PIL import Image

from ptm_cli.output.drawing import (
    COCO_KEYPOINT_EDGES,
    COCO_KEYPOINT_NAMES,
    class_colour,
    crop_box,
    draw_detections,
    font_size_for,
    hex_colour,
    line_width_for,
    skeleton_for,
    text_colour_on,
)

GREY = (128, 128, 128)


def grey(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def detection(label: str, score: float, xmin: float, ymin: float, xmax: float, ymax: float, **extra: object) -> dict:
    return {"label": label, "score": score, "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}, **extra}


def person_keypoints(visible: dict[str, tuple[float, float]], hidden_score: float = -5.0) -> list[dict]:
    """The 17 COCO points: those in ``visible`` at their place with score 2.0, the rest at (5, 5) scored low."""
    points = []
    for name in COCO_KEYPOINT_NAMES:
        x, y = visible.get(name, (5.0, 5.0))
        points.append({"name": name, "x": x, "y": y, "score": 2.0 if name in visible else hidden_score})
    return points


def band_height(image: Image.Image, x: int, y_start: int, colour: tuple[int, int, int], step: int = -1) -> int:
    """How many rows of ``colour`` run from (x, y_start) upwards (``step`` -1) or downwards (+1)."""
    rows = 0
    y = y_start
    while 0 <= y < image.height and image.getpixel((x, y)) == colour:
        rows += 1
        y += step
    return rows


def colours_in(image: Image.Image) -> set[tuple[int, int, int]]:
    return {colour for _, colour in image.getcolors(maxcolors=1 << 24) or []}


def changed_pixels(before: Image.Image, after: Image.Image) -> set[tuple[int, int]]:
    width = before.width
    old, new = before.tobytes(), after.tobytes()
    return {((i // 3) % width, (i // 3) // width) for i in range(0, len(old), 3) if old[i : i + 3] != new[i : i + 3]}


# --- colours ------------------------------------------------------------------------------------------


def test_a_class_keeps_its_colour_and_classes_differ() -> None:
    assert class_colour("person") == class_colour("person")
    assert class_colour("person") != class_colour("dog")
    colours = {class_colour(name) for name in ("person", "dog", "cat", "car", "bicycle", "traffic light")}
    assert len(colours) == 6


def test_colours_do_not_depend_on_the_hash_seed() -> None:
    """Pinned: the results page and images drawn by another run or machine must agree."""
    assert hex_colour("person") == "#26dd87"
    code = "from ptm_cli.output.drawing import hex_colour; print(hex_colour('person'), hex_colour('dog'))"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "12345")
    }
    assert seen == {f"{hex_colour('person')} {hex_colour('dog')}\n"}


@pytest.mark.parametrize("label", ["person", "dog", "", "クルマ", "a" * 1000, "\ud800 lone surrogate"])
def test_hex_colour_is_the_tuple(label: str) -> None:
    red, green, blue = class_colour(label)
    assert hex_colour(label) == f"#{red:02x}{green:02x}{blue:02x}"
    assert all(isinstance(c, int) and 0 <= c <= 255 for c in (red, green, blue))


def test_colours_are_saturated_and_bright() -> None:
    for index in range(500):
        _, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in class_colour(f"class {index}")))
        assert saturation >= 0.65 and value >= 0.75, (index, saturation, value)


def test_label_text_is_black_or_white_whichever_contrasts() -> None:
    assert text_colour_on((255, 255, 0)) == (0, 0, 0)
    assert text_colour_on((0, 0, 160)) == (255, 255, 255)
    assert text_colour_on((255, 255, 255)) == (0, 0, 0)
    assert text_colour_on((0, 0, 0)) == (255, 255, 255)


# --- skeleton and sizes -------------------------------------------------------------------------------


def test_the_coco_skeleton_joins_the_body() -> None:
    index = {name: i for i, name in enumerate(COCO_KEYPOINT_NAMES)}
    assert len(COCO_KEYPOINT_NAMES) == 17
    edges = {frozenset(edge) for edge in COCO_KEYPOINT_EDGES}
    assert len(edges) == len(COCO_KEYPOINT_EDGES) == 19
    for a, b in [
        ("left_shoulder", "left_elbow"),
        ("left_elbow", "left_wrist"),
        ("right_hip", "right_knee"),
        ("right_knee", "right_ankle"),
        ("left_shoulder", "right_shoulder"),
        ("left_hip", "right_hip"),
        ("nose", "left_eye"),
    ]:
        assert frozenset((index[a], index[b])) in edges, (a, b)
    assert frozenset((index["left_wrist"], index["right_ankle"])) not in edges
    # Every point is reached from the nose.
    reached, frontier = {0}, [0]
    while frontier:
        point = frontier.pop()
        for a, b in COCO_KEYPOINT_EDGES:
            for here, there in ((a, b), (b, a)):
                if here == point and there not in reached:
                    reached.add(there)
                    frontier.append(there)
    assert reached == set(range(17))


def test_skeleton_only_for_the_coco_points() -> None:
    assert skeleton_for(list(COCO_KEYPOINT_NAMES)) == list(COCO_KEYPOINT_EDGES)
    assert skeleton_for(["a", "b", "c"]) == []
    assert skeleton_for(list(COCO_KEYPOINT_NAMES[:-1])) == []
    assert skeleton_for([]) == []


def test_font_size_follows_the_image() -> None:
    assert 14 <= font_size_for(640, 480) <= 16
    assert 60 <= font_size_for(4000, 3000) <= 90
    assert font_size_for(3000, 4000) == font_size_for(4000, 3000)
    assert font_size_for(1, 1) == 12
    assert font_size_for(0, 0) == 12
    assert font_size_for(100_000, 10) == 200
    sizes = [font_size_for(side, side) for side in range(100, 20_000, 97)]
    assert sizes == sorted(sizes)
    assert line_width_for(640, 480) >= 2 and line_width_for(1, 1) == 2
    assert line_width_for(4000, 3000) > line_width_for(640, 480)


# --- boxes and labels ---------------------------------------------------------------------------------


def test_a_box_is_outlined_in_its_class_colour() -> None:
    image = grey(640, 480)
    drawn = draw_detections(image, [detection("dog", 0.5, 100, 150, 300, 350)])
    colour = class_colour("dog")
    line = line_width_for(640, 480)
    # The outline lies inside the box: pixels 100..299 wide, 150..349 high.
    for xy in [(100, 250), (299, 250), (200, 349), (200, 150), (100 + line - 1, 250), (299 - line + 1, 250)]:
        assert drawn.getpixel(xy) == colour, xy
    for xy in [(99, 250), (300, 250), (200, 350), (100 + line, 250), (200, 250), (600, 450), (5, 470)]:
        assert drawn.getpixel(xy) == GREY, xy


def test_the_label_sits_above_the_box_in_a_readable_band() -> None:
    image = grey(640, 480)
    drawn = draw_detections(image, [detection("dog", 0.5, 100, 150, 300, 350)])
    colour = class_colour("dog")
    height = band_height(drawn, 101, 149, colour)
    assert height >= 12
    band = drawn.crop((100, 150 - height, 300, 150))
    assert text_colour_on(colour) in colours_in(band), "no text in the label band"


@pytest.mark.parametrize(("width", "height", "at_least"), [(4000, 3000, 50), (640, 480, 12), (3000, 4000, 50)])
def test_labels_are_readable_on_big_images(width: int, height: int, at_least: int) -> None:
    # A box in the middle half of the image, so there is room for the label above it.
    left, top, right, bottom = width // 4, height // 4, 3 * width // 4, 3 * height // 4
    drawn = draw_detections(grey(width, height), [detection("person", 0.98, left, top, right, bottom)])
    measured = band_height(drawn, left + 1, top - 1, class_colour("person"))
    assert measured >= at_least
    assert measured <= 0.06 * max(width, height) + 20  # a label, not a banner


def test_the_label_goes_inside_the_box_without_room_above() -> None:
    drawn = draw_detections(grey(640, 480), [detection("cat", 0.75, 50, 0, 300, 200)])
    colour = class_colour("cat")
    # The band's last column: the first coloured pixel from the right, inside the box's right edge.
    edge = next(x for x in range(297, 50, -1) if drawn.getpixel((x, 5)) == colour)
    assert edge < 200
    band = band_height(drawn, edge, 0, colour, step=1)
    assert 12 <= band <= 40  # the band runs from the top edge downwards, over the box's top
    assert text_colour_on(colour) in colours_in(drawn.crop((50, 0, 300, band)))


def test_the_label_is_kept_inside_the_image() -> None:
    # A box at the right edge: its label is moved left so that it ends at the image's edge.
    drawn = draw_detections(grey(640, 480), [detection("bicycle", 0.5, 630, 200, 640, 300)])
    colour = class_colour("bicycle")
    assert drawn.getpixel((639, 190)) == colour
    assert band_height(drawn, 639, 199, colour) >= 12
    row = [drawn.getpixel((x, 195)) for x in range(640)]
    assert row.count(GREY) < 640 - 60  # the whole band, not a sliver at the edge


def test_the_best_detection_is_on_top() -> None:
    best, worst = detection("person", 0.9, 100, 100, 200, 200), detection("dog", 0.1, 100, 100, 200, 200)
    for order in ([best, worst], [worst, best]):
        drawn = draw_detections(grey(320, 240), order)
        assert drawn.getpixel((100, 150)) == class_colour("person")


def test_the_input_is_left_as_it_was() -> None:
    image = grey(200, 100)
    before = image.tobytes()
    drawn = draw_detections(image, [detection("dog", 0.5, 10, 10, 100, 90)])
    assert drawn is not image
    assert image.tobytes() == before
    assert drawn.tobytes() != before
    assert draw_detections(image, []) is not image
    assert draw_detections(image, []).tobytes() == before


# --- keypoints ----------------------------------------------------------------------------------------


def test_a_limb_is_drawn_between_its_keypoints() -> None:
    points = person_keypoints({"left_shoulder": (100, 100), "left_elbow": (200, 180)})
    drawn = draw_detections(grey(640, 480), [detection("person", 0.9, 50, 50, 300, 300, keypoints=points)])
    colour = class_colour("person")
    assert drawn.getpixel((150, 140)) == colour  # the midpoint of the limb
    assert drawn.getpixel((100, 100)) == colour and drawn.getpixel((200, 180)) == colour
    # The hidden points (score below 0) at (5, 5) draw nothing, nor do limbs to them.
    assert drawn.getpixel((5, 5)) == GREY
    assert drawn.getpixel((52, 52)) == GREY


def test_keypoints_below_the_minimum_score_are_left_out() -> None:
    points = person_keypoints({"left_shoulder": (100, 100), "left_elbow": (200, 180)})
    drawn = draw_detections(
        grey(640, 480), [detection("person", 0.9, 50, 50, 300, 300, keypoints=points)], min_keypoint_score=3.0
    )
    for xy in [(150, 140), (100, 100), (200, 180)]:
        assert drawn.getpixel(xy) == GREY, xy


def test_unknown_points_get_dots_but_no_lines() -> None:
    points = [{"name": "a", "x": 100, "y": 100, "score": 1.0}, {"name": "b", "x": 200, "y": 100, "score": 1.0}]
    drawn = draw_detections(grey(320, 240), [{"label": "thing", "score": 0.5, "keypoints": points}])
    assert drawn.getpixel((100, 100)) == class_colour("thing")
    assert drawn.getpixel((200, 100)) == class_colour("thing")
    assert drawn.getpixel((150, 100)) == GREY


def test_a_limb_leaving_the_image_keeps_its_direction() -> None:
    # From (100, 100) to (100 + 1e6, 100 + 1e6): the visible part is the diagonal, not a line to a corner.
    points = person_keypoints({"left_shoulder": (100, 100), "left_elbow": (100 + 1e6, 100 + 1e6)})
    drawn = draw_detections(grey(320, 240), [{"label": "person", "score": 0.5, "keypoints": points}])
    assert drawn.getpixel((200, 200)) == class_colour("person")
    assert drawn.getpixel((300, 120)) == GREY


# --- bad numbers and odd images -----------------------------------------------------------------------


BAD = [
    detection("a", math.nan, 10, 10, 50, 50),
    detection("b", 0.5, math.nan, 10, 50, 50),
    detection("c", 0.5, -math.inf, 10, math.inf, 50),
    detection("d", 0.5, -1e300, -1e300, 1e300, 1e300),
    detection("e", 0.5, 5000, 5000, 6000, 6000),
    detection("f", 0.5, 60, 50, 20, 10),  # corners the wrong way round
    detection("g", 0.5, 30, 30, 30, 30),  # zero size
    {"label": None, "score": None, "box": {"xmin": 1, "ymin": 2, "xmax": 3}},
    {"label": "h", "score": "high", "box": None},
    {"label": "i", "score": 0.5, "box": {"xmin": "x", "ymin": 0, "xmax": 1, "ymax": 1}},
    {
        "label": "person",
        "score": 0.5,
        "keypoints": [
            {"name": name, "x": x, "y": y, "score": s}
            for name, x, y, s in zip(
                COCO_KEYPOINT_NAMES,
                [math.nan, math.inf, 1e300, -1e300, 10, 20, 1e308, -1e308, 40, 50, None, "x", 3, 4, 5, 6, 7],
                [1, 2, 3, 4, math.nan, 1e300, -1e308, 1e308, 5, 6, 7, 8, 9, 10, 11, 12, 13],
                [1, 1, 1, 1, 1, 1, 1, 1, math.nan, None, 1, 1, 1, 1, 1, 1, 1],
                strict=True,
            )
        ],
    },
    {},
]


@pytest.mark.parametrize("size", [(640, 480), (1, 1), (1, 10_000), (10_000, 1), (3, 2)])
def test_bad_numbers_and_tiny_images_do_not_fail(size: tuple[int, int]) -> None:
    image = grey(*size)
    drawn = draw_detections(image, BAD, min_keypoint_score=0.0)
    assert drawn.size == size and drawn.mode == "RGB"


def test_a_box_partly_outside_is_clipped_and_one_wholly_outside_draws_nothing() -> None:
    colour = class_colour("dog")
    drawn = draw_detections(grey(320, 240), [detection("dog", 0.5, -50, 100, 100, 200)])
    assert drawn.getpixel((0, 150)) == colour  # the left edge, clamped to the image's
    assert drawn.getpixel((99, 150)) == colour
    outside = draw_detections(grey(320, 240), [detection("dog", 0.5, 400, 300, 500, 400)])
    assert outside.tobytes() == grey(320, 240).tobytes()


def test_boxes_on_one_pixel_and_on_a_long_strip() -> None:
    one = draw_detections(grey(1, 1), [detection("dog", 0.5, 0, 0, 1, 1)])
    assert one.size == (1, 1) and one.getpixel((0, 0)) != GREY
    strip = draw_detections(grey(1, 10_000), [detection("dog", 0.5, 0, 5000, 1, 6000)])
    assert strip.size == (1, 10_000)
    assert strip.getpixel((0, 5500)) == class_colour("dog")
    assert strip.getpixel((0, 9000)) == GREY


@pytest.mark.parametrize(
    ("mode", "fill"), [("L", 128), ("RGBA", (128, 128, 128, 255)), ("I;16", 128 * 257), ("P", 0), ("1", 1), ("F", 0.5)]
)
def test_any_mode_comes_back_rgb(mode: str, fill: object) -> None:
    image = Image.new(mode, (64, 48), fill)  # type: ignore[arg-type]
    before = image.tobytes()
    drawn = draw_detections(image, [detection("cat", 0.5, 10, 10, 50, 40)])
    assert drawn.mode == "RGB" and drawn.size == (64, 48)
    assert drawn.getpixel((10, 25)) == class_colour("cat")
    assert image.mode == mode and image.tobytes() == before
    if mode in ("L", "RGBA", "I;16"):
        assert drawn.getpixel((58, 45)) == GREY  # 16-bit grey is scaled, not clipped to white


def test_thousands_of_detections_draw_quickly_and_only_where_they_are() -> None:
    rng = random.Random(7)
    labels = ["person", "dog", "cat", "car", "bus"]
    detections = []
    for _ in range(5000):
        x0, y0 = rng.uniform(200, 500), rng.uniform(200, 400)
        detections.append(
            detection(rng.choice(labels), rng.random(), x0, y0, x0 + rng.uniform(0, 100), y0 + rng.uniform(0, 100))
        )
    image = grey(1280, 720)
    started = time.perf_counter()
    drawn = draw_detections(image, detections)
    elapsed = time.perf_counter() - started
    assert elapsed < 30, f"{elapsed:.1f}s for 5000 detections"
    changed = changed_pixels(image, drawn)
    assert changed
    # Boxes lie within x 200..600, y 200..500; labels above them reach up by one band and right by one label.
    assert all(150 <= y <= 500 and 200 <= x <= 800 for x, y in changed)
    allowed = {class_colour(label) for label in labels} | {(0, 0, 0), (255, 255, 255)}
    # Text is anti-aliased, so its edges mix colours; outlines and bands are pure class colours.
    assert sum(drawn.getpixel(xy) in allowed for xy in changed) > 0.8 * len(changed)


# --- crops --------------------------------------------------------------------------------------------


def gradient(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x % 256, y % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    return image


def test_a_crop_is_the_box_rounded_outwards() -> None:
    image = gradient(100, 80)
    crop = crop_box(image, {"xmin": 10.5, "ymin": 20.2, "xmax": 30.1, "ymax": 40.0}, width=100, height=80)
    assert crop is not None
    assert crop.size == (21, 20)  # columns 10..30, rows 20..39
    assert crop.getpixel((0, 0)) == image.getpixel((10, 20))
    assert crop.getpixel((20, 19)) == image.getpixel((30, 39))


def test_a_crop_is_clipped_to_the_image_and_scaled_to_it() -> None:
    image = gradient(100, 80)
    clipped = crop_box(image, {"xmin": -20, "ymin": 70, "xmax": 10, "ymax": 500}, width=100, height=80)
    assert clipped is not None and clipped.size == (10, 10)
    assert clipped.getpixel((0, 0)) == image.getpixel((0, 70))
    # A box of the 200x160 original, on a half-size copy.
    half = crop_box(image, {"xmin": 20, "ymin": 40, "xmax": 60, "ymax": 80}, width=200, height=160)
    assert half is not None and half.size == (20, 20)
    assert half.getpixel((0, 0)) == image.getpixel((10, 20))


@pytest.mark.parametrize(
    "box",
    [
        {"xmin": 10, "ymin": 10, "xmax": 10, "ymax": 30},
        {"xmin": 10, "ymin": 30, "xmax": 20, "ymax": 30},
        {"xmin": 200, "ymin": 10, "xmax": 300, "ymax": 30},
        {"xmin": -30, "ymin": -30, "xmax": -10, "ymax": -10},
        {"xmin": math.nan, "ymin": 10, "xmax": 20, "ymax": 30},
        {"xmin": 0, "ymin": 0, "xmax": math.inf, "ymax": 30},
        {"xmin": 0, "ymin": 0, "xmax": 10},
        {},
    ],
)
def test_an_empty_or_broken_box_has_no_crop(box: dict) -> None:
    assert crop_box(gradient(100, 80), box, width=100, height=80) is None


def test_crops_of_huge_boxes_and_tiny_images() -> None:
    assert crop_box(gradient(1, 1), {"xmin": -1e300, "ymin": -1e300, "xmax": 1e300, "ymax": 1e300}, width=1, height=1)
    crop = crop_box(gradient(1, 10_000), {"xmin": 0, "ymin": 9990.5, "xmax": 1, "ymax": 20_000}, width=1, height=10_000)
    assert crop is not None and crop.size == (1, 10)
    assert crop_box(gradient(10, 10), {"xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5}, width=0, height=10) is None


def test_importing_the_module_loads_neither_torch_nor_pillow() -> None:
    code = "import sys, ptm_cli.output.drawing; print(sorted(m for m in ('torch', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
