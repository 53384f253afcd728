"""Clip reading: the sampler returns the frames it promises (checked against a full sequential
decode), decodes only what it needs, handles variable frame rates, short clips, frame folders,
DataLoader workers, and names the file and the problem for bad input."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from omnimask.config import flatten
from omnimask.data import BadSampleError
from omnimask.plugins import get_recipe
from omnimask_video.data import ClipDataset, ClipSpec, find_sources
from omnimask_video.readers import FrameFolderReader, VideoFileReader, check_timestamps
from omnimask_video.synthetic import write_video
from PIL import Image
from torch.utils.data import DataLoader

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def full_decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of the file, decoded front to back (the reference), and its times (s)."""
    with av.open(str(path)) as container:
        decoded = [
            (frame.time, frame.to_ndarray(format="rgb24", width=64, height=64))
            for frame in container.decode(video=0)
        ]
    decoded.sort(key=lambda item: item[0])
    times = np.array([t for t, _ in decoded])
    return np.stack([f for _, f in decoded]), times - times[0]


@pytest.mark.parametrize("suffix", ["mp4", "webm", "avi", "mkv"])
def test_clip_frames_match_a_full_decode(video_files, suffix) -> None:  # noqa: ANN001
    reference, _ = full_decode(video_files[suffix])
    assert len(reference) == 40
    reader = VideoFileReader(video_files[suffix])
    for seed in range(4):
        torch.manual_seed(seed)
        clip = reader.read(num_frames=6, stride=3, size=64, train=True, short_clip="error")
        start = int(clip.plan.frames[0])
        assert clip.plan.frames.tolist() == list(range(start, start + 16, 3))
        assert not clip.plan.shortened
        np.testing.assert_array_equal(clip.frames, reference[clip.plan.frames])


def test_clip_decodes_only_the_frames_it_needs(video_files) -> None:  # noqa: ANN001
    """A clip of span 7 decodes at most a GOP plus its span, never the whole file."""
    reader = VideoFileReader(video_files["mp4"])
    keyframes = np.flatnonzero(reader.index.keyframe)
    assert keyframes.tolist() == [0, 8, 16, 24, 32]  # GOP 8
    for seed in range(6):
        torch.manual_seed(seed)
        clip = reader.read(num_frames=4, stride=2, size=64, train=True, short_clip="error")
        # The least any decoder can do: each frame is reached from the previous wanted frame,
        # or from its own GOP's keyframe when that is later.
        least, position = 0, -1
        for frame in clip.plan.frames.tolist():
            start = max(position + 1, keyframes[keyframes <= frame].max())
            least, position = least + frame - start + 1, frame
        assert clip.decoded == least <= 8 + 7


def test_long_stride_seeks_past_keyframes_instead_of_decoding_through(video_files) -> None:  # noqa: ANN001
    """Frames 8 apart each sit in their own GOP: one decoded frame each (the keyframes)."""
    reader = VideoFileReader(video_files["mp4"])
    clip = reader.read(num_frames=5, stride=8, size=64, train=False, short_clip="error")
    assert clip.plan.frames.tolist() == [3, 11, 19, 27, 35]  # centred: span 33 of 40
    assert clip.decoded == 5 * 4  # each from its GOP's keyframe: 8k .. 8k + 3


def test_variable_frame_rate_is_resampled_at_the_average_rate(tmp_path, frames) -> None:  # noqa: ANN001
    """Clip frame i is the frame on screen at `(start + i * stride) / average fps`."""
    steps = np.random.default_rng(0).choice([50, 100, 150, 200], size=29)  # 1/1200 s units
    pts = np.concatenate([[0], np.cumsum(steps)]).tolist()
    path = tmp_path / "vfr.mp4"
    write_video(path, frames[:30], pts=pts)
    reference, times = full_decode(path)
    reader = VideoFileReader(path)
    np.testing.assert_allclose(reader.index.times, np.array(pts) / 1200, atol=1e-6)
    fps = reader.index.fps
    slots = int(times[-1] * fps) + 1

    def on_screen(slot: int) -> int:
        return max(j for j in range(len(times)) if times[j] <= slot / fps + 1e-9)

    candidates = [[on_screen(s + 2 * i) for i in range(5)] for s in range(slots - 8)]
    for seed in range(4):
        torch.manual_seed(seed)
        clip = reader.read(num_frames=5, stride=2, size=64, train=True, short_clip="error")
        assert clip.plan.frames.tolist() in candidates
        np.testing.assert_array_equal(clip.frames, reference[clip.plan.frames])


def test_short_clip_loops_pads_or_refuses(tmp_path, frames) -> None:  # noqa: ANN001
    path = tmp_path / "short.mp4"
    write_video(path, frames[:5])
    reference, _ = full_decode(path)
    reader = VideoFileReader(path)
    looped = reader.read(num_frames=6, stride=2, size=64, train=True, short_clip="loop")
    assert looped.plan.shortened and looped.plan.frames.tolist() == [0, 2, 4, 1, 3, 0]
    np.testing.assert_array_equal(looped.frames, reference[[0, 2, 4, 1, 3, 0]])
    padded = reader.read(num_frames=6, stride=2, size=64, train=True, short_clip="pad")
    assert padded.plan.shortened and padded.plan.frames.tolist() == [0, 2, 4, 4, 4, 4]
    with pytest.raises(BadSampleError, match=r"short\.mp4: has 5 frames .* spans 11") as raised:
        reader.read(num_frames=6, stride=2, size=64, train=True, short_clip="error")
    key = str(raised.value).rsplit("(", 1)[1].split("=")[0]
    assert key in flatten(get_recipe("video/videomae").config("demo"))  # names a real key


def test_frame_folder_reads_only_the_needed_images(tmp_path, frames) -> None:  # noqa: ANN001
    folder = tmp_path / "clip_a"
    folder.mkdir()
    for t, frame in enumerate(frames[:20]):
        Image.fromarray(frame).save(folder / f"frame_{t:04d}.png")
    (tmp_path / "b.mp4").write_bytes(b"")  # a video beside it is found as its own source
    assert find_sources(tmp_path) == [tmp_path / "b.mp4", folder]
    clip = FrameFolderReader(folder).read(4, 3, 32, train=False, short_clip="error")
    assert clip.plan.frames.tolist() == [5, 8, 11, 14]  # centred: span 10 of 20
    assert clip.decoded == 4
    expected = [np.asarray(Image.fromarray(frames[i]).resize((32, 32), Image.Resampling.BILINEAR))
                for i in (5, 8, 11, 14)]  # fmt: skip
    np.testing.assert_array_equal(clip.frames, np.stack(expected))


def test_resize_and_crop_keep_the_aspect(tmp_path, frames) -> None:  # noqa: ANN001
    wide = np.concatenate([frames[:12], frames[:12]], axis=2)  # 64 x 128
    path = tmp_path / "wide.mp4"
    write_video(path, wide)
    clip = VideoFileReader(path).read(4, 2, 32, train=False, short_clip="error")
    assert clip.frames.shape == (4, 32, 32, 3)
    with av.open(str(path)) as container:
        decoded = [
            f.to_ndarray(format="rgb24", width=64, height=32) for f in container.decode(video=0)
        ]
    assert clip.plan.frames.tolist() == [2, 4, 6, 8]
    np.testing.assert_array_equal(clip.frames[0], decoded[2][:, 16:48])  # centre of 64 x 32


def test_decoding_in_dataloader_workers_matches_in_process(video_files) -> None:  # noqa: ANN001
    spec = ClipSpec(4, 2, 32, MEAN, STD)
    sources = [video_files["mp4"], video_files["webm"], video_files["avi"], video_files["mkv"]]
    dataset = ClipDataset(sources, spec, train=False)
    in_process = torch.stack([dataset[i]["video"] for i in range(4)])
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    in_workers = torch.cat([batch["video"] for batch in loader])
    assert in_workers.shape == (4, 3, 4, 32, 32)
    torch.testing.assert_close(in_workers, in_process, rtol=0, atol=0)
    raw = torch.from_numpy(VideoFileReader(sources[0]).read(4, 2, 32, False, "error").frames)
    expected = (raw.permute(3, 0, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(in_process[0], expected)


def test_corrupt_file_is_named(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BadSampleError, match=r"garbage\.mp4: not a readable video file") as error:
        VideoFileReader(path).read(4, 2, 32, False, "loop")
    assert error.value.source == str(path)


def test_truncated_file_is_named(tmp_path, video_files) -> None:  # noqa: ANN001
    data = video_files["mp4"].read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])  # the MP4 index (moov) is at the end: now gone
    with pytest.raises(BadSampleError, match=r"truncated\.mp4: not a readable video file"):
        VideoFileReader(path).read(4, 2, 32, False, "loop")


def test_file_without_video_stream_is_named(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "speech.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(4):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, 1024 * k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(
        BadSampleError, match=r"speech\.mp4: has no video stream \(streams: audio\)"
    ):
        VideoFileReader(path).read(4, 2, 32, False, "loop")


def test_frames_sharing_a_timestamp_are_a_bad_sample() -> None:
    check_timestamps(Path("fine.mp4"), np.array([0, 512, 1024]))
    with pytest.raises(BadSampleError, match=r"zeros\.mp4: 4 frames but 1 distinct timestamps"):
        check_timestamps(Path("zeros.mp4"), np.zeros(4, dtype=np.int64))


def test_a_shard_record_gives_the_clip_the_source_gives(tmp_path, video_files, frames) -> None:  # noqa: ANN001
    """`ClipDataset.record` keeps a source's encoded bytes (a video file, or a frame folder's
    images end to end); `sample` decodes the same clip from them as `[]` does from the file."""
    folder = tmp_path / "clip_a"
    folder.mkdir()
    for t, frame in enumerate(frames[:20]):
        Image.fromarray(frame).save(folder / f"frame_{t:04d}.png")
    spec = ClipSpec(num_frames=4, stride=2, size=32, mean=MEAN, std=STD)
    dataset = ClipDataset([video_files["mp4"], video_files["webm"], folder], spec, train=True)
    for index in range(len(dataset)):
        torch.manual_seed(index)
        expected = dataset[index]["video"]
        record = dataset.record(index)
        torch.manual_seed(index)
        torch.testing.assert_close(dataset.sample(record)["video"], expected, rtol=0, atol=0)
    assert dataset.record(2)["frame_sizes"].tolist() == [
        (folder / f"frame_{t:04d}.png").stat().st_size for t in range(20)
    ]
    broken = dataset.record(2)
    broken["data"] = broken["data"][:100]  # the images cut short: the frame is named
    with pytest.raises(BadSampleError, match=rf"^{folder}/frame_00\d\d.png: unreadable frame"):
        dataset.sample(broken)
