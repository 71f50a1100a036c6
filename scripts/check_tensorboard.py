#!/usr/bin/env python3
"""Reads a run folder's event files with TensorBoard's own code and checks what it finds.

    python3 scripts/check_tensorboard.py RUN_DIR     list every scalar tag (steps and values), image and
                                                     text, as TensorBoard's EventAccumulator and the data
                                                     provider behind its dashboards see them; compare with
                                                     RUN_DIR/expected.json when present (exit 1 on a mismatch)
    python3 scripts/check_tensorboard.py --print-golden
                                                     the records TensorBoardTests compares our encoder with

Needs `pip install tensorboard` (and Pillow to compare image pixels), so it is not part of CI. The test
FormatsTests.TensorBoardTests/testWritesARunForTensorBoardsOwnReader writes a run with expected.json:

    mkdir /tmp/tb-run && TVM_TENSORBOARD_RUN_DIR=/tmp/tb-run swift test -c release --skip-build \\
        --disable-swift-testing --filter TensorBoardTests/testWritesARunForTensorBoardsOwnReader
    python3 scripts/check_tensorboard.py /tmp/tb-run
"""
import io
import json
import os
import sys

from tensorboard.backend.event_processing import data_provider, event_accumulator, plugin_event_multiplexer
from tensorboard import context
from tensorboard.util import tensor_util


def print_golden():
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.text.summary_v2 import text_pb
    from tensorboard.summary.writer.record_writer import RecordWriter

    Value = summary_pb2.Summary.Value
    note = "```json\n" + '{"lr": 0.001, "note": "' + "x" * 150 + '"}\n```'
    events = {
        "fileVersion": event_pb2.Event(wall_time=1765000000.25, file_version="brain.Event:2"),
        "sessionStart": event_pb2.Event(wall_time=1765000001.5, step=500,
                                        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)),
        "scalars": event_pb2.Event(wall_time=1765000002.75, step=42, summary=summary_pb2.Summary(value=[
            Value(tag="loss/total", simple_value=0.125), Value(tag="lr", simple_value=-3.0e-4)])),
        "image": event_pb2.Event(wall_time=1765000003.0, step=7, summary=summary_pb2.Summary(value=[
            Value(tag="samples", image=summary_pb2.Summary.Image(
                height=2, width=3, colorspace=3, encoded_image_string=bytes([0x89, 0x50, 0x4E, 0x47, 1, 2, 3])))])),
        "text": event_pb2.Event(wall_time=1765000004.0, step=1000000, summary=text_pb("config", note)),
    }
    for name, event in events.items():
        buffer = io.BytesIO()
        RecordWriter(buffer).write(event.SerializeToString())
        print(name, buffer.getvalue().hex())


def pixels(png):
    """The PNG's pixels as a flat list, or None without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return list(Image.open(io.BytesIO(png)).tobytes())


def read_with_accumulator(run_dir):
    """What tensorboard.backend.event_processing.event_accumulator finds, as plain Python values."""
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    images = [{"tag": tag, "step": e.step, "width": e.width, "height": e.height, "png": e.encoded_image_string}
              for tag in tags["images"] for e in acc.Images(tag)]
    text = {}
    for tag in tags["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "text":
            text[tag] = [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)]
    return scalars, images, text


def read_with_data_provider(run_dir):
    """What the dashboards get: the scalars, images and text plugins' data from the data provider."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(run_dir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, run_dir)
    ctx = context.RequestContext()
    scalars = {}
    for run, series in provider.read_scalars(ctx, experiment_id="", plugin_name="scalars", downsample=10**6).items():
        for tag, points in series.items():
            scalars[tag] = [[p.step, p.value] for p in points]
    images = []
    blobs = provider.read_blob_sequences(ctx, experiment_id="", plugin_name="images", downsample=10**6)
    for run, series in blobs.items():
        for tag, points in series.items():
            for point in points:
                # An image point is [width, height, encoded image], each a blob.
                width, height, png = (provider.read_blob(ctx, blob_key=b.blob_key) for b in point.values)
                images.append({"tag": tag, "step": point.step, "width": int(width), "height": int(height), "png": png})
    text = {}
    for run, series in provider.read_tensors(ctx, experiment_id="", plugin_name="text", downsample=10**6).items():
        for tag, points in series.items():
            text[tag] = [p.numpy.item().decode() for p in points]
    return scalars, images, text


def report(name, scalars, images, text, expected):
    print(f"== {name}")
    for tag in sorted(scalars):
        points = scalars[tag]
        shown = ", ".join(f"{s}:{v:.6g}" for s, v in points)
        print(f"scalar {tag}: {len(points)} points: {shown}")
    for image in sorted(images, key=lambda i: i["step"]):
        print(f"image {image['tag']} step {image['step']}: {image['width']}x{image['height']}, "
              f"{len(image['png'])} PNG bytes")
    for tag, values in sorted(text.items()):
        for value in values:
            print(f"text {tag}: {value!r}")
    if expected is None:
        return []
    problems = []
    want_scalars = {tag: [[int(s), v] for s, v in points] for tag, points in expected["scalars"].items()}
    if scalars != want_scalars:
        problems.append(f"{name}: scalars differ from expected.json")
    got_images = [(i["tag"], i["step"], i["width"], i["height"]) for i in sorted(images, key=lambda i: i["step"])]
    want_images = [(i["tag"], int(i["step"]), int(i["width"]), int(i["height"])) for i in expected["images"]]
    if got_images != want_images:
        problems.append(f"{name}: images {got_images} differ from expected {want_images}")
    for got, want in zip(sorted(images, key=lambda i: i["step"]), expected["images"]):
        decoded = pixels(got["png"])
        if decoded is not None and decoded != [int(p) for p in want["pixels"]]:
            problems.append(f"{name}: the pixels of image {got['tag']} at step {got['step']} differ")
    if text != {tag: [value] for tag, value in expected["text"].items()}:
        problems.append(f"{name}: text {text} differs from expected")
    return problems


def main(argv):
    if argv[1:] == ["--print-golden"]:
        print_golden()
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run_dir = argv[1]
    files = sorted(f for f in os.listdir(run_dir) if "tfevents" in f)
    print("event files: " + ", ".join(files))
    expected_path = os.path.join(run_dir, "expected.json")
    expected = json.load(open(expected_path)) if os.path.exists(expected_path) else None
    problems = report("EventAccumulator", *read_with_accumulator(run_dir), expected)
    problems += report("data provider (what the dashboards show)", *read_with_data_provider(run_dir), expected)
    for p in problems:
        print("MISMATCH: " + p)
    if expected is not None and not problems:
        print("everything in expected.json was found, with the same steps, values, image sizes and pixels, and text")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
