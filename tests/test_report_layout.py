"""How the report reads: failed artifacts, image counts, numbers on the Pareto plot that do not collide."""
from rich.console import Console

from pipeline.report import markdown, pareto, write


def _row(artifact, top1, p50, device="host", images=10000, runtime="onnxruntime"):
    return {"artifact": artifact, "device": device, "runtime": runtime, "status": "ok", "top1": top1,
            "images": images, "bytes": 2048, "latency": {"one_thread": {"p50_ms": p50}}}


def _doc(rows, device="host"):
    return {"schema": "compress.results/1", "run": {"run_id": "r1"}, "settings": {},
            "machine": {"device": device, "cpu": "cpu", "cores": 2, "os": "linux", "python": "3.11"}, "rows": rows}


REASON = "quantize: every calibration method lost more than 1.0 points (best: 3.41 with Entropy)"


def test_a_failed_artifact_says_failed_and_its_reason_goes_under_the_table(tmp_path):
    doc = _doc([_row("torch_fp32", 0.92, 1.0, runtime="torch"),
                {"artifact": "tflite_int8", "status": "failed", "reason": REASON}])
    (tmp_path / "results.json").write_text(__import__("json").dumps(doc))
    console = Console(width=100, record=True)
    console.print(write.rich_table(tmp_path, 0.5))
    text = console.export_text()
    row = next(line for line in text.splitlines() if "tflite_int8" in line and "│" in line)
    assert "failed" in row and "calibration" not in row
    assert f"failed: tflite_int8 (host): {REASON}" in " ".join(text.split())
    md = markdown.markdown(doc, [], 0.5)
    assert "| tflite_int8 | host | failed |" in md and f"- tflite_int8 (host): {REASON}" in md


def test_device_rows_show_how_many_images_they_were_measured_on():
    doc = _doc([_row("tflite_int8", 0.921, 0.2)])
    board = _doc([_row("tflite_int8", 0.938, 9.0, device="pi4", images=1000)], device="pi4")
    md = markdown.markdown(doc, [board], 0.5)
    assert "| images |" in md
    assert "| tflite_int8 | host | 92.10 | 10000 |" in md and "| tflite_int8 | pi4 | 93.80 | 1000 |" in md


def test_a_run_distilled_with_ama_says_plainly_that_it_ties_kd():
    doc = _doc([_row("tflite_int8", 0.921, 0.2)])
    assert "Hinton KD" not in markdown.markdown(doc, [], 0.5)  # method not recorded (an older results.json)
    doc["run"]["method"] = "ama"
    assert "- Method: the adaptive module (`ama`) has not beaten plain Hinton KD" in markdown.markdown(doc, [], 0.5)
    doc["run"]["method"] = "kd"
    assert "Hinton KD" not in markdown.markdown(doc, [], 0.5)


def test_numbers_of_coinciding_points_do_not_overlap():
    from pipeline.report.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    xy = [(0.275, 92.13), (0.276, 92.13), (0.29, 92.13), (0.301, 92.13), (0.127, 92.01)]
    ax.scatter(*zip(*xy))
    ax.set_xscale("log")
    offsets = pareto._place_numbers(ax, xy)
    pix = ax.transData.transform(xy)
    scale = fig.dpi / 72
    boxes = [(px + dx * scale, py + dy * scale, px + (dx + 11) * scale, py + (dy + 8) * scale)
             for (px, py), (dx, dy) in zip(pix, offsets)]
    plt.close(fig)
    assert not any(pareto._overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])



def test_training_curves_compare_students_on_cross_entropy_not_on_their_training_objectives():
    """A distilled student's training loss adds its teacher's terms: only validation cross-entropy is comparable."""
    from pipeline.report.plots import curves_figure, pyplot

    def history(train, val):
        return [{"epoch": e + 1, "train_loss": t, "val_loss": v, "val_top1": 0.9} for e, (t, v) in
                enumerate(zip(train, val))]

    fig = curves_figure({"ama student": history([3.0, 0.7], [0.31, 0.24]),
                         "student alone": history([0.87, 0.36], [0.45, 0.30])}, "t", cross_entropy=("student alone",))
    loss_ax, acc_ax = fig.axes
    drawn = {line.get_label(): list(line.get_ydata()) for line in loss_ax.get_lines()}
    ticks = [t for t in loss_ax.get_xticks() if 1 <= t <= 2]
    pyplot().close(fig)
    assert drawn == {"ama student, validation": [0.31, 0.24], "student alone, validation": [0.45, 0.30],
                     "student alone, training": [0.87, 0.36]}
    assert ticks == [1, 2]  # whole epochs, no 1.5


def test_training_curves_without_a_validation_split_draw_what_there_is():
    from pipeline.report.plots import curves_figure, pyplot

    rows = [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.5}]
    fig = curves_figure({"ama student": rows, "student alone": rows}, "t", cross_entropy=("student alone",))
    loss_ax, acc_ax = fig.axes
    drawn = [line.get_label() for line in loss_ax.get_lines()]
    said = [t.get_text() for t in acc_ax.texts]
    pyplot().close(fig)
    assert drawn == ["student alone, training"] and said == ["no validation split (data.val_fraction: 0)"]


def test_the_quantization_sentence_says_costs_or_above_in_words_not_a_signed_cost():
    def rows(drop):
        return [{**_row("torch_fp32", 0.92, 0.8), "precision": "fp32"},
                {**_row("tflite_int8", 0.92 - drop / 100, 0.08), "precision": "int8", "drop_pts": drop}]

    said = {d: next(x for x in markdown.story(rows(d), "host") if "Quantization" in x) for d in (0.31, -0.03, 0)}
    assert "(tflite_int8) costs 0.31 points and runs 10.0x faster" in said[0.31]
    assert "(tflite_int8) scores 0.03 points above fp32 and runs 10.0x faster" in said[-0.03]
    assert "(tflite_int8) costs no accuracy and runs" in said[0]


def test_the_table_and_the_sentence_state_one_speedup():
    """The default run's table said 12.7x and its sentence 12.6x for one file: the table rounded the ratio to two
    places (12.646 -> 12.65) and then to one (12.7), the sentence rounded it once (12.6)."""
    from pipeline.report import table

    doc = {"machine": {"device": "host"}, "rows": [{**_row("torch_fp32", 0.92, 0.75007, runtime="torch"),
                                                    "precision": "fp32"},
                                                   {**_row("tflite_int8", 0.92, 0.05931), "precision": "int8"}]}
    rows = table.table(doc)
    int8 = next(r for r in rows if r["artifact"] == "tflite_int8")
    cell = markdown.cells(int8, {})[7]
    sentence = next(x for x in markdown.story(rows, "host") if "Quantization" in x)
    assert cell == "12.6x" and "runs 12.6x faster" in sentence


def test_a_ninth_device_gets_a_marker_too(tmp_path):
    """Eight markers were zipped with the sorted device names: the ninth device had none and raised KeyError."""
    rows = [_row("tflite_int8", 0.9, 0.2 + i, device=f"board{i}") for i in range(9)]
    path = pareto.pareto_png(rows, {}, tmp_path / "pareto.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_device_names_with_brackets_print_as_they_are_in_the_terminal_table(tmp_path):
    """A board's name is free text: '[x]' vanished as markup and '[/i]' raised MarkupError."""
    import json

    (tmp_path / "results.json").write_text(json.dumps(_doc([_row("tflite_int8", 0.9, 0.2)])))
    (tmp_path / "devices").mkdir()
    for name in ("pi [x]", "bench[/i]"):
        board = _doc([_row("tflite_int8", 0.9, 5.0, device=name)], device=name)
        (tmp_path / "devices" / f"{name.replace('/', '_')}.json").write_text(json.dumps(board))
    console = Console(width=150, record=True)
    console.print(write.rich_table(tmp_path, 0.5))
    text = console.export_text()
    assert "pi [x]" in text and "bench[/i]" in text
