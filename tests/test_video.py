"""Videos in and out: every task on a video's frames, translated clips with their sound and timestamps, and
hostile files. Every clip is built here with PyAV."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from clips import decoded_frames, encode_black, make_clip, probe, shade
from helpers import SeededWeights, assert_refused, ptm_process, run_ptm

from ptm_cli.errors import ImageTooLarge, UnreadableImage, UnsupportedFormat
from ptm_cli.video.reader import open_clip
from ptm_cli.video.sampling import Sampling, parse_every, parse_time, sampling_from

pytest.importorskip("av")

VFR_MS = [40, 60, 40, 80]  # a variable frame rate: frame times 0, .04, .10, .14, .22, ...


@pytest.fixture
def zebra(generator_file: Path) -> list[str]:
    return ["zebra", "-w", str(generator_file), "--size", "32"]


@pytest.fixture(scope="module")
def resnet18(seeded_weights: SeededWeights) -> list[str]:
    return ["classify", "-m", "resnet18", "-w", str(seeded_weights.classifier("resnet18", seed=1)), "-k", "1"]


# --- reading ----------------------------------------------------------------------------------------------


def test_frames_keep_their_order_times_and_orientation(tmp_path: Path) -> None:
    clip = open_clip(make_clip(tmp_path / "c.mp4", frames=8, durations_ms=VFR_MS, rotation=90), "c.mp4")
    assert (clip.width, clip.height, clip.rotation) == (48, 64, 90)  # stored 64x48, shown upright
    frames = list(clip.frames())
    assert [f.index for f in frames] == list(range(8))
    assert [f.time for f in frames] == [0.0, 0.04, 0.1, 0.14, 0.22, 0.26, 0.32, 0.36]
    assert [f.last for f in frames] == [False] * 7 + [True]
    for frame in frames:
        pixels = np.asarray(frame.image).astype(int)
        assert pixels.shape == (64, 48, 3)
        assert np.abs(pixels[40, 24] - shade(frame.index)).max() <= 6  # which frame: its colour
    # Turned 90 degrees counter-clockwise: the stored top-left mark is now bottom-left.
    first = np.asarray(frames[0].image)
    assert first[60, 3].min() > 200 and first[3, 3].max() < 200


@pytest.mark.parametrize(
    ("sampling", "times"),
    [
        (Sampling(every_seconds=0.1), [0.0, 0.1, 0.22, 0.32]),
        (Sampling(every_frames=3), [0.0, 0.14, 0.32]),
        (Sampling(count=2), [0.0, 0.22]),
        (Sampling(start=0.1, end=0.3), [0.1, 0.14, 0.22, 0.26]),
    ],
)
def test_sampling_takes_the_first_frame_at_or_after_each_time(
    tmp_path: Path, sampling: Sampling, times: list[float]
) -> None:
    clip = open_clip(make_clip(tmp_path / "c.mp4", frames=8, durations_ms=VFR_MS), "c.mp4")
    assert [f.time for f in clip.frames(sampling)] == times


def test_seeking_takes_the_same_frames_as_decoding_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long clip with a keyframe every 10 frames: --every 1.2s seeks, and still takes exactly these frames."""
    from ptm_cli.video import reader

    path = make_clip(tmp_path / "long.mp4", frames=250, rate=25, size=(32, 32), keyframe_every=10)
    clip = open_clip(path, "long.mp4")
    everything = list(clip.frames())
    wanted = [next(f for f in everything if f.time >= t - 1e-9) for t in np.arange(0, 10, 1.2)]
    seeks: list[float] = []
    seek = reader._seek
    monkeypatch.setattr(reader, "_seek", lambda *args: seeks.append(args[-1]) or seek(*args))
    taken = list(clip.frames(Sampling(every_seconds=1.2)))
    assert len(seeks) >= 6  # every gap after the first two keyframes is crossed by a seek
    assert [(f.index, f.time) for f in taken] == [(f.index, f.time) for f in wanted]
    for a, b in zip(taken, wanted, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_options_are_checked_before_anything_opens() -> None:
    assert parse_every("1s") == (1.0, None) and parse_every("250ms") == (0.25, None) and parse_every("10") == (None, 10)
    assert parse_time("--start", "1:30") == 90 and parse_time("--start", "0:01:02.5") == 62.5
    for bad in ("0", "-1s", "fast", "nan s", "1e400s"):
        with pytest.raises(Exception, match="--every"):
            parse_every(bad)
    with pytest.raises(Exception, match="below 60"):
        parse_time("--start", "1:75")
    with pytest.raises(Exception, match="after --start"):
        sampling_from(None, None, "10", "5")
    with pytest.raises(Exception, match="not both"):
        sampling_from("1s", 3, None, None)


# --- every task takes videos ------------------------------------------------------------------------------


def test_classify_gives_a_record_per_sampled_frame(resnet18: list[str], tmp_path: Path) -> None:
    path = make_clip(tmp_path / "clip.mp4", frames=8, durations_ms=VFR_MS)
    result = run_ptm([*resnet18, str(path), "--every", "0.1s"])
    assert result.code == 0, result.stderr
    records = result.records()
    assert [(r["input"], r["frame"], r["time"]) for r in records] == [
        (str(path), 0, 0.0),
        (str(path), 2, 0.1),
        (str(path), 4, 0.22),
        (str(path), 6, 0.32),
    ]
    assert list(records[0])[:3] == ["input", "frame", "time"]
    # Each frame's predictions are those of the frame saved as an image (up to the batch's rounding).
    frame = decoded_frames(path)[4]
    from PIL import Image

    Image.fromarray(frame).save(tmp_path / "f4.png")
    alone = run_ptm([*resnet18, str(tmp_path / "f4.png")]).records()[0]
    (ours,), (theirs,) = alone["predictions"], records[2]["predictions"]
    assert ours["label"] == theirs["label"] and ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)
    csv = run_ptm([*resnet18, str(path), "--frames", "2", "-f", "csv"])
    assert csv.stdout.splitlines()[0] == "input,frame,time,rank,index,label,probability,error"
    assert [line.split(",")[1:3] for line in csv.stdout.splitlines()[1:]] == [["0", "0"], ["4", "0.22"]]
    # The table names a frame on its first row only, as it does the input.
    table = run_ptm([*resnet18, "-k", "2", str(path), "--frames", "2", "-f", "table"]).stdout.splitlines()
    assert table[0].split()[:3] == ["input", "frame", "time"] and len(table) == 5
    assert table[1].split()[1:3] == ["0", "0"] and table[3].split()[1:3] == ["4", "0.22"]
    assert str(path) not in table[2] and str(path) not in table[4]


def test_images_and_videos_mix_and_image_records_stay_as_they_were(resnet18: list[str], tmp_path: Path) -> None:
    from helpers import DATA

    image = str(DATA / "chelsea.png")
    alone = run_ptm([*resnet18, image])
    path = make_clip(tmp_path / "clip.mkv", frames=3)
    mixed = run_ptm([*resnet18, image, str(path), image])
    assert mixed.code == 0, mixed.stderr
    records = mixed.records()
    assert [r.get("frame") for r in records] == [None, 0, 1, 2, None]
    assert mixed.stdout.splitlines()[0] == alone.stdout.splitlines()[0]  # byte for byte


def test_translate_keeps_frames_timestamps_sound_and_orientation(zebra: list[str], tmp_path: Path) -> None:
    from PIL import Image

    source = make_clip(tmp_path / "horse.mp4", frames=10, durations_ms=VFR_MS, audio=True, rotation=-90)
    out = tmp_path / "zebra.mp4"
    result = run_ptm([*zebra, str(source), "-o", str(out), "--crf", "0"])
    assert result.code == 0, result.stderr
    (record,) = result.records()  # one record for the video, as for its one output file
    assert record["output"] == str(out) and record["frames"] == 10 and record["size"] == [48, 64]
    given, made = probe(source), probe(out)
    assert made["frames"] == 10 and made["times"] == given["times"]
    assert made["sound_packets"] == given["sound_packets"] > 0
    assert made["size"] == (48, 64) and made["codec"] == "h264"  # upright, no display matrix left to apply
    assert open_clip(out, "zebra.mp4").rotation == 0
    # Each frame is what ptm zebra makes of that frame saved as an image, up to lossless H.264's one loss: the
    # colour at half resolution (yuv420p), applied here to the image too.
    frames, outputs = decoded_frames(source), decoded_frames(out)
    for i in (0, 7):
        Image.fromarray(frames[i]).save(tmp_path / f"f{i}.png")
        assert run_ptm([*zebra, str(tmp_path / f"f{i}.png"), "-o", str(tmp_path / f"z{i}.png")]).code == 0
        expected = yuv420p(Image.open(tmp_path / f"z{i}.png").convert("RGB")).astype(int)
        assert np.abs(outputs[i].astype(int) - expected).mean() < 1


def test_translate_trims_and_writes_beside_the_input(zebra: list[str], tmp_path: Path) -> None:
    source = make_clip(tmp_path / "horse.mov", frames=25, rate=25, audio=True)
    page = tmp_path / "page.html"
    result = run_ptm([*zebra, str(source), "--start", "0.4", "--end", "0.8", "--codec", "h265", "--report", str(page)])
    assert result.code == 0, result.stderr
    out = tmp_path / "horse.zebra.mov"
    assert result.records()[0]["output"] == str(out)
    made = probe(out)
    assert made["codec"] == "hevc" and made["frames"] == 10
    assert made["times"][0] == 0.0 and made["times"][-1] == pytest.approx(0.36)  # moved to start at 0
    assert 0 < made["sound_packets"] < probe(source)["sound_packets"]  # the sound trimmed with it
    html = page.read_text()  # one entry for the video: its last frame taken, and what it became
    assert html.count("horse.zebra.mov") >= 1 and html.count("data:image/") >= 2


def test_an_existing_output_is_kept_and_a_failed_video_leaves_nothing(zebra: list[str], tmp_path: Path) -> None:
    source = make_clip(tmp_path / "horse.mp4", frames=6)
    out = tmp_path / "zebra.mp4"
    out.write_bytes(b"mine")
    result = run_ptm([*zebra, str(source), "-o", str(out)])
    assert result.code == 1
    (record,) = result.records()  # one error, not one per frame
    assert "already exists" in record["error"]["message"] and record["frame"] == 0
    assert out.read_bytes() == b"mine"
    skipped = run_ptm([*zebra, str(source), "-o", str(out), "--skip-existing"])
    assert skipped.code == 0 and skipped.records() == [{"input": str(source), "output": str(out), "skipped": True}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["horse.mp4", "zebra.mp4"]  # no staged file left


def test_a_video_output_needs_a_video_name(zebra: list[str], tmp_path: Path) -> None:
    source = make_clip(tmp_path / "horse.mp4", frames=2)
    assert_refused(run_ptm([*zebra, str(source), "-o", str(tmp_path / "z.png")]), "FILE.mp4")
    assert_refused(run_ptm([*zebra, str(source), "-o", "-"]), "not written to stdout")
    assert_refused(run_ptm([*zebra, str(source), "-o", str(tmp_path / "z.webm"), "--codec", "h264"]), "h264")
    assert_refused(run_ptm([*zebra, str(source), "-o", str(tmp_path / "z.mp4"), "--crf", "60"]), "--crf")
    assert not list(tmp_path.glob("z*"))


def test_detect_draws_a_video(seeded_weights: SeededWeights, tmp_path: Path) -> None:
    weights = seeded_weights.detector("ssdlite320_mobilenet_v3_large", boost={1: 7.0})
    source = make_clip(tmp_path / "street.mp4", frames=4, size=(96, 64), audio=True)
    args = ["detect", "-m", "ssdlite320_mobilenet_v3_large", "-w", str(weights), "--min-score", "0.01"]
    result = run_ptm([*args, str(source), "--draw"])
    assert result.code == 0, result.stderr
    records = result.records()
    assert [r["frame"] for r in records] == [0, 1, 2, 3]
    assert all(r["drawn"] == str(tmp_path / "street.detect.mp4") and r["detections"] for r in records)
    made = probe(tmp_path / "street.detect.mp4")
    assert made["frames"] == 4 and made["sound_packets"] == probe(source)["sound_packets"]
    assert_refused(run_ptm([*args, str(source), "--coco", str(tmp_path / "c.json")]), "--coco")


def test_tasks_that_cannot_take_videos_say_so(seeded_weights: SeededWeights, tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", frames=2)
    weights = str(seeded_weights.classifier("resnet18", seed=1))
    refused = run_ptm(["embed", "-m", "resnet18", "-w", weights, str(source), "-o", str(tmp_path / "i.parquet")])
    assert_refused(refused, "index file holds images")
    embedded = run_ptm(["embed", "-m", "resnet18", "-w", weights, str(source)])
    assert embedded.code == 0 and [r["frame"] for r in embedded.records()] == [0, 1]
    assert_refused(
        run_ptm(["classify", "-m", "resnet18", "-w", weights, "--every", "1s", str(tmp_path)]), "name a video"
    )
    # A video classifier neither embeds nor runs as a batch job (which takes images).
    assert_refused(run_ptm(["embed", "-m", "mc3_18", str(source)]), "labels clips of video")
    batch = run_ptm(["batch", "classify", "-m", "mc3_18", str(source), "--output", str(tmp_path / "job")])
    assert_refused(batch, "batch jobs take images")
    assert not (tmp_path / "job").exists()


def yuv420p(image: object) -> np.ndarray:
    """``image`` after the colour conversion a written video applies (BT.709, limited range, 4:2:0)."""
    import av

    frame = av.VideoFrame.from_image(image).reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
    return np.asarray(frame.to_image())


# --- hostile and broken videos ----------------------------------------------------------------------------


def test_hostile_videos_fail_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import av

    good = make_clip(tmp_path / "good.mp4", frames=3)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnreadableImage, match="not a video ptm can read"):
        open_clip(truncated, "truncated.mp4")
    # A Matroska file cut short decodes what is there, then says where it stopped.
    long = make_clip(tmp_path / "long.mkv", frames=40, size=(64, 64))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(long.read_bytes()[: long.stat().st_size * 2 // 3])
    taken = []
    try:
        taken = [f.index for f in open_clip(cut, "cut.mkv").frames()]
    except UnreadableImage as exc:
        assert "cut.mkv" in str(exc)
    assert len(taken) < 40
    # Sound only (named .mp4): no video stream.
    with av.open(str(tmp_path / "sound.mp4"), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(UnsupportedFormat, match="no video stream"):
        open_clip(tmp_path / "sound.mp4", "sound.mp4")
    # A playlist that names other files is not a container ptm opens.
    playlist = tmp_path / "list.mp4"
    playlist.write_text(f"#EXTM3U\n#EXTINF:1,\nfile://{good}\n#EXT-X-ENDLIST\n")
    with pytest.raises(UnreadableImage):
        open_clip(playlist, "list.mp4")
    # Frames larger than the pixel limit are refused before any is decoded.
    monkeypatch.setenv("PTM_MAX_PIXELS", "1000")
    with pytest.raises(ImageTooLarge, match="PTM_MAX_PIXELS"):
        open_clip(good, "good.mp4")


def test_many_streams_ten_bits_and_odd_sizes(tmp_path: Path) -> None:
    import av

    path = tmp_path / "many.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        for _ in range(300):
            out.add_stream("aac", rate=8000)
        encode_black(out, video, 3)
    assert len(list(open_clip(path, "many.mkv").frames())) == 3
    notes: list[str] = []
    deep = open_clip(make_clip(tmp_path / "deep.mkv", frames=2, pix_fmt="yuv420p10le"), "deep.mkv")
    frames = list(deep.frames(on_note=notes.append))
    assert frames[1].image.mode == "RGB" and notes == ["deep.mkv: 10-bit video converted to 8-bit sRGB"]


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_an_animation_is_a_video_when_frames_are_asked_for(resnet18: list[str], tmp_path: Path, suffix: str) -> None:
    from PIL import Image

    pictures = [Image.new("RGB", (40, 30), shade(i)) for i in range(4)]
    animation = tmp_path / f"anim{suffix}"
    pictures[0].save(animation, save_all=True, append_images=pictures[1:], duration=[100, 200, 100, 100], loop=0)
    assert [r.get("frame") for r in run_ptm([*resnet18, str(animation)]).records()] == [None]  # as before: one image
    every = run_ptm([*resnet18, str(animation), "--every", "1"])
    assert [(r["frame"], r["time"]) for r in every.records()] == [(0, 0.0), (1, 0.1), (2, 0.3), (3, 0.4)]
    frames = decoded_frames(animation)
    for i, frame in enumerate(frames):  # lossy WebP moves a colour by a level or two
        assert np.abs(frame[15, 20].astype(int) - shade(i)).max() <= 3


def test_ctrl_c_leaves_no_output_and_no_staged_file(generator_file: Path, tmp_path: Path) -> None:
    import signal
    import time

    source = make_clip(tmp_path / "horse.mp4", frames=400, size=(96, 64))
    out = tmp_path / "zebra.mp4"
    args = ["zebra", "-w", str(generator_file), "--size", "64", str(source), "-o", str(out)]
    with ptm_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".zebra.mp4.*")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the staged file appears with the first frame
        assert list(tmp_path.glob(".zebra.mp4.*"))
        proc.send_signal(signal.SIGINT)
        proc.stdout.read()
        assert proc.wait(timeout=60) == 130, proc.stderr.read().decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["horse.mp4"]


def test_without_pyav_a_video_asks_for_the_extra(
    resnet18: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ptm_cli.video

    source = make_clip(tmp_path / "clip.mp4", frames=2)
    monkeypatch.setattr(ptm_cli.video, "find_spec", lambda name: None)
    result = run_ptm([*resnet18, str(source)])
    assert result.code == 2 and "pip install 'ptm[video]'" in result.stderr


# --- video classifiers ------------------------------------------------------------------------------------


def test_a_video_classifier_labels_clips_as_torchvision_would(seeded_weights: SeededWeights, tmp_path: Path) -> None:
    """mc3_18 (the smallest Kinetics model): 16-frame clips at 15 frames a second, torchvision's own transform."""
    import torch
    from torchvision.models import get_model
    from torchvision.models.video import MC3_18_Weights

    weights = seeded_weights.classifier("mc3_18", seed=3, num_classes=400)
    source = make_clip(tmp_path / "act.mp4", frames=40, rate=25, size=(96, 72))
    result = run_ptm(["classify", "-m", "mc3_18", "-w", str(weights), str(source), "-k", "3"])
    assert result.code == 0, result.stderr
    records = result.records()
    assert [(r["frame"], r["time"], r["frames"]) for r in records] == [(0, 0.0, 16), (27, 1.08, 8)]
    assert records[0]["end"] == 1.0 and records[0]["model"] == "mc3_18"
    # The same frames through torchvision's transform and model give the same labels.
    taken = [np.asarray(f.image) for f in open_clip(source, "act.mp4").frames(Sampling(every_seconds=1 / 15))]
    assert len(taken) == 24
    model = get_model("mc3_18", num_classes=400).eval()
    model.load_state_dict(torch.load(weights))
    transform = MC3_18_Weights.KINETICS400_V1.transforms()
    clip = torch.from_numpy(np.stack(taken[:16])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        probabilities = torch.softmax(model(transform(clip)[None])[0], 0)
    values, indices = probabilities.topk(3)
    ours = records[0]["predictions"]
    assert [p["index"] for p in ours] == indices.tolist()
    assert [p["probability"] for p in ours] == pytest.approx(values.tolist(), rel=1e-4)
    assert ours[0]["label"] == MC3_18_Weights.KINETICS400_V1.meta["categories"][indices[0]]
    # An image given to a video classifier is that input's error; the options of image models are refused.
    from helpers import DATA

    image = run_ptm(["classify", "-m", "mc3_18", "-w", str(weights), str(DATA / "chelsea.png")])
    assert image.code == 1 and "labels clips of a video" in image.records()[0]["error"]["message"]
    assert_refused(run_ptm(["classify", "-m", "mc3_18", "-w", str(weights), "--crop", "64", str(source)]), "--crop")


def test_sound_a_container_cannot_hold_is_left_out_with_a_note(zebra: list[str], tmp_path: Path) -> None:
    import av

    source = tmp_path / "pcm.mkv"
    with av.open(str(source), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=8000)
        encode_black(out, video, 5)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        for packet in [*sound.encode(samples), *sound.encode(None)]:
            out.mux(packet)
    in_mp4 = run_ptm([*zebra, str(source), "-o", str(tmp_path / "out.mp4")])
    assert in_mp4.code == 0 and "cannot hold this video's sound" in in_mp4.stderr and ".mkv" in in_mp4.stderr
    assert probe(tmp_path / "out.mp4")["sound_packets"] == 0 and probe(tmp_path / "out.mp4")["frames"] == 5
    in_mkv = run_ptm([*zebra, str(source), "-o", str(tmp_path / "out.mkv")])
    assert in_mkv.code == 0 and in_mkv.stderr == ""
    assert probe(tmp_path / "out.mkv")["sound_packets"] == probe(source)["sound_packets"] > 0


def test_frames_closer_than_any_real_rate_keep_their_times(zebra: list[str], tmp_path: Path) -> None:
    """Frames 1/90000 s apart: no frame rate describes them; ptm keeps their times and writes them as they were."""
    import av

    source = tmp_path / "fast.mp4"
    with av.open(str(source), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, 90000)
        for i in range(6):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), shade(i), np.uint8), format="rgb24")
            picture.pts, picture.time_base = i, Fraction(1, 90000)
            for packet in video.encode(picture):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
    frames = list(open_clip(source, "fast.mp4").frames())
    assert [f.index for f in frames] == list(range(6)) and frames[1].time == pytest.approx(1 / 90000, abs=1e-6)
    result = run_ptm([*zebra, str(source), "-o", str(tmp_path / "out.mp4")])
    assert result.code == 0, result.stderr
    assert probe(tmp_path / "out.mp4")["times"] == probe(source)["times"]


def test_a_container_that_lies_about_its_length_gives_the_frames_it_has(
    resnet18: list[str], zebra: list[str], tmp_path: Path
) -> None:
    """A Matroska file whose header claims 100 times its length: the frames that are there, no hang."""
    import struct

    source = make_clip(tmp_path / "liar.mkv", frames=10, rate=25)
    data = bytearray(source.read_bytes())
    at = data.index(b"\x44\x89\x88") + 3  # Segment Info's Duration: an 8-byte float, in milliseconds
    (duration,) = struct.unpack(">d", data[at : at + 8])
    data[at : at + 8] = struct.pack(">d", duration * 100)
    source.write_bytes(bytes(data))
    clip = open_clip(source, "liar.mkv")
    assert clip.duration is not None and clip.duration > 30  # what it claims
    spread = run_ptm([*resnet18, str(source), "--frames", "50"])  # targets every ~0.8 s of a claimed 40 s
    assert spread.code == 0 and [r["frame"] for r in spread.records()] == [0]
    translated = run_ptm([*zebra, str(source), "-o", str(tmp_path / "out.mp4")])
    assert translated.code == 0 and translated.records()[0]["frames"] == 10
    assert probe(tmp_path / "out.mp4")["frames"] == 10


def test_segment_gives_each_frames_classes_and_writes_no_files(seeded_weights: SeededWeights, tmp_path: Path) -> None:
    weights = seeded_weights.segmenter("lraspp_mobilenet_v3_large", boost={15: 1.0})
    source = make_clip(tmp_path / "clip.mp4", frames=6, size=(96, 64))
    args = ["segment", "-m", "lraspp_mobilenet_v3_large", "-w", str(weights), str(source)]
    result = run_ptm([*args, "--frames", "3"])
    assert result.code == 0, result.stderr
    records = result.records()
    assert [(r["frame"], r["time"]) for r in records] == [(0, 0.0), (2, 0.08), (4, 0.16)]
    assert all(r["coverage"] for r in records)
    for files in (["--mask"], ["--overlay"], ["--cutout", "person"], ["--output-dir", str(tmp_path / "out")]):
        assert_refused(run_ptm([*args, *files]), "masks and cut-outs of images")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
