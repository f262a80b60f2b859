"""The report's Deployment section: variants against the seed claims, parity warnings, microcontroller fit,
estimated energy and the compression stages' details. Each part appears only when metrics.json has its data,
and the whole section only when the run has some (a plain distillation run renders without it)."""
from __future__ import annotations

from .history import to_number
from .markup import esc, num_cell, table, variant_cell
from .style import runtime_name, variant_colors
from .summary import (MISSING, PARITY_THRESHOLD, VARIANT_ORDER, claim_floors, deployment_rows, energy_rows,
                      format_count, format_factor, format_kib, format_percent, format_sig, mcu_rows,
                      ordered_variants, parity_warnings, training_energy_rows, variant_label, variant_metric,
                      variant_noun)

DEPLOY_KEYS = ("energy", "sparsity", "parity_flag")  # variant keys that only the compression/deployment stages write
RUN_KEYS = ("mcu", "training_energy", "compression")
PRUNE_STAGES = {"prune_teacher": "teacher", "prune_student": "student"}
MET, NOT_MET = "✓ met", "✗ not met"


def has_deployment_data(metrics: dict) -> bool:
    """Whether the run has anything for the Deployment section: a variant beyond the standard four, a variant
    with energy / sparsity / a parity flag, or an ``mcu``, ``training_energy`` or ``compression`` entry."""
    if any(metrics.get(key) for key in RUN_KEYS):
        return True
    names = ordered_variants(metrics)
    return (any(name not in VARIANT_ORDER for name in names)
            or any(variant_metric(metrics, name, key) for name in names for key in DEPLOY_KEYS))


def deployment_section(metrics: dict) -> str:
    """The whole ``<section>``, or an empty string when the run has no deployment data."""
    if not has_deployment_data(metrics):
        return ""
    parts = [claims_table(metrics), latency_block(metrics), parity_block(metrics), mcu_block(metrics),
             energy_block(metrics), compression_block(metrics)]
    return '<section id="deployment"><h2>Deployment</h2>' + "".join(p for p in parts if p) + "</section>"


# --- latency of every variant in every runtime -----------------------------------------------------


def latency_block(metrics: dict) -> str:
    """Every variant in every runtime it was timed in (interleaved rounds): median and p90 per batch size, noisy
    timings marked; the labelled speed-ups; the artifact to deploy."""
    variants = metrics.get("variants") or {}
    rows, batches = [], []
    for name in ordered_variants(metrics):
        for per in (variants[name].get("latency") or {}).values():
            batches += [b for b in per if b not in batches]
    if not batches:
        return ""
    colors = variant_colors(metrics)
    deploy = metrics.get("deploy") or {}
    for name in ordered_variants(metrics):
        for runtime, per in (variants[name].get("latency") or {}).items():
            cells = []
            for b in batches:
                st = per.get(b) or {}
                noisy = ' <span class="mark miss">noisy</span>' if st.get("noisy") else ""
                cells += [num_cell(esc(format_sig(st.get("median_ms"))) + noisy), num_cell(esc(format_sig(st.get("p90_ms"))))]
            chosen = deploy.get("variant") == name and deploy.get("runtime") == runtime
            rows.append("<tr>" + variant_cell(variant_label(metrics, name), colors[name],
                                              [runtime_name(runtime), "deploy this" if chosen else ""])
                        + "".join(cells) + "</tr>")
    head = ("<tr><th rowspan=2>Variant · runtime</th>" + "".join(f"<th colspan=2>batch {esc(b[1:])} (ms)</th>"
                                                               for b in batches) + "</tr><tr>"
            + "<th>median</th><th>p90</th>" * len(batches) + "</tr>")
    q = metrics.get("latency_quality") or {}
    note = (f"<p class=\"note\">Timed interleaved: {esc(q.get('rounds'))} rounds, every variant and runtime once per "
            f"round in rotating order, {esc(q.get('repeats'))} batch-1 calls each, {esc(q.get('threads'))} thread(s). "
            "A timing is marked noisy when its p90 exceeds 1.5× its median or its slowest round's median exceeds "
            "1.25× its fastest's.</p>") if q else ""
    speed = "".join(f"<li>{esc(v['what'])}: <b>{esc(format_factor(v.get('b1')))}</b> at batch 1</li>"
                    for v in (metrics.get("speedups") or {}).values() if isinstance(v, dict))
    speed = f"<ul>{speed}</ul>" if speed else ""
    return "<h3>Latency by runtime</h3>" + speed + table(head, rows) + note


# --- (i) against the seed claims ------------------------------------------------------------------


def mark(met: bool | None) -> str:
    """A met / not-met badge for a claim check, nothing when there is no claim or no measurement."""
    if met is None:
        return ""
    return f' <span class="mark {"met" if met else "miss"}">{MET if met else NOT_MET}</span>'


def _claim_header(title: str, floor: float | None, fmt: str) -> str:
    """A column header with the bar it is checked against on a second line."""
    bar = f"<br><small>claim ≥ {esc(fmt.format(floor))}</small>" if floor is not None else ""
    return f"<th>{esc(title)}{bar}</th>"


def claims_table(metrics: dict) -> str:
    """(i) Every deployment candidate against the fp32 teacher, each claimed quantity marked met / not met."""
    rows = deployment_rows(metrics)
    if not rows:
        return ""
    floors = claim_floors(metrics)
    colors = variant_colors(metrics)
    with_parity = any(row["agreement_fp32"] is not None for row in rows)
    retention_floor = None if floors["retention"] is None else 100 * floors["retention"]
    head = ("<tr><th>Variant</th>" + _claim_header("Accuracy kept (% of teacher)", retention_floor, "{:g} %")
            + _claim_header("Smaller than teacher", floors["size_pct"], "{:g} %")
            + "<th>Fewer MACs</th>" + _claim_header("Batch-1 speed-up", floors["speedup_b1"], "{:g}×")
            + ("<th>Agrees with fp32 student %</th>" if with_parity else "") + "</tr>")
    body = []
    for row in rows:
        size = (f"{row['size_pct']:.1f} % · {format_factor(row['size_factor'])}".replace("-", "−")
                if row["size_pct"] is not None else MISSING)
        cells = [variant_cell(row["label"], colors[row["variant"]], _variant_details(metrics, row)),
                 num_cell(esc(format_percent(row["retention"])) + mark(row["met"]["retention"])),
                 num_cell(esc(size) + mark(row["met"]["size_pct"])),
                 num_cell(esc(format_factor(row["macs_factor"]))),
                 num_cell(esc(format_factor(row["speedup_b1"])) + mark(row["met"]["speedup_b1"]))]
        if with_parity:
            cells.append(num_cell(esc(format_percent(row["agreement_fp32"])), "warn" if row["parity_flag"] else ""))
        body.append("<tr>" + "".join(cells) + "</tr>")
    teacher_latency = to_number(variant_metric(metrics, "teacher", "latency_ms_b1"))
    teacher_runtime = runtime_name(variant_metric(metrics, "teacher", "runtime") or "pytorch")
    claimed = _claimed_text(metrics)
    note = ("Every compressed or converted variant against the fp32 teacher"
            + (f" (batch-1 median {teacher_latency:.3g} ms on {teacher_runtime})" if teacher_latency else "")
            + ". Size is the artifact's bytes on disk; speed-up compares each variant's batch-1 median on its own "
              "runtime with the teacher's. "
            + (f"The seed paper claims {claimed}; a quantity is met when it reaches the lower end of its range "
               "(beating the upper end counts as met). " if claimed
               else "No claims were recorded, so nothing is marked. ")
            + "MACs carry no claim. The student trained from scratch is a baseline and is left out.")
    return ("<h3>Against the seed claims</h3>" + table(head, body, "deploy")
            + f'<p class="note">{esc(note)}</p>')


def _claimed_text(metrics: dict) -> str:
    """The claimed ranges in words: ``accuracy retention 90–97 %; size reduction 50–70 %; speed-up 2–5×``."""
    claims = metrics.get("claims") or {}
    parts = []
    for key, label, unit, scale in (("accuracy_retention", "accuracy retention", " %", 100),
                                    ("size_reduction_pct", "size reduction", " %", 1),
                                    ("speedup", "speed-up", "×", 1)):
        values = [to_number(v) for v in claims.get(key) or ()]
        if len(values) == 2 and None not in values:
            low, high = sorted(scale * v for v in values)
            parts.append(f"{label} {low:g}–{high:g}{unit}")
    return "; ".join(parts)


def _variant_details(metrics: dict, row: dict) -> list[str]:
    """Model, runtime, sparsity and training-only helper parameters of a variant, for its table cell."""
    name = row["variant"]
    details = [variant_metric(metrics, name, "model"), variant_metric(metrics, name, "runtime")]
    if row["sparsity"]:
        details.append(f"{100 * row['sparsity']:.0f} % of weights zero")
    helpers = to_number(variant_metric(metrics, name, "helper_params"))
    if helpers:
        details.append(f"{format_count(helpers)} training-only helper params")
    return [str(d) for d in details if d]


# --- (ii) parity ----------------------------------------------------------------------------------


def parity_block(metrics: dict) -> str:
    """(ii) A warning box naming each converted artifact whose predictions drift from the fp32 student's."""
    flagged = parity_warnings(metrics)
    if not flagged:
        return ""
    items = "".join(f"<li><strong>{esc(row['label'])}</strong>: agrees with the fp32 student on "
                    f"{esc(format_percent(row['agreement']))} % of test inputs</li>" for row in flagged)
    return (f'<div class="warnbox"><h3>Parity warnings</h3><ul>{items}</ul>'
            f'<p class="note">A converted artifact should give the fp32 student\'s prediction on at least '
            f"{100 * PARITY_THRESHOLD:.0f} % of inputs; below that the conversion (quantization ranges, an "
            "unsupported op, a layout change) changed the model, so check it before deploying.</p></div>")


# --- (iii) microcontroller fit --------------------------------------------------------------------


def _margin(n: float | None) -> str:
    """A margin in KB, signed when negative, marked as over the limit."""
    text = format_kib(n)
    return num_cell(esc(text), "over" if n is not None and n < 0 else "")


def _fits(row: dict) -> str:
    """✓ / ✗ for a board, naming the memory that overflows."""
    if row["fits"] is None:
        return num_cell(MISSING)
    if row["fits"]:
        return '<td class="fit yes">✓ fits</td>'
    short = [m for m, key in (("flash", "fits_flash"), ("SRAM", "fits_sram")) if row[key] is False]
    return f'<td class="fit no">✗ {esc(" and ".join(short) or "does not fit")}</td>'


def mcu_block(metrics: dict) -> str:
    """(iii) Flash and SRAM needed vs available on each checked board, the target board highlighted."""
    rows = mcu_rows(metrics)
    if not rows:
        return ""
    mcu = metrics.get("mcu") or {}
    head = ('<tr><th rowspan="2">Board</th><th class="group" colspan="3">Flash (KB)</th>'
            '<th class="group" colspan="3">SRAM (KB)</th><th class="text" rowspan="2">Fits</th></tr>'
            "<tr><th>needed</th><th>available</th><th>margin</th><th>needed</th><th>available</th><th>margin</th></tr>")
    body = []
    for row in rows:
        tag = ' <span class="tag">target</span>' if row["target"] else ""
        detail = row["board"] if row["name"] != row["board"] else row["note"] or ""
        cells = [f'<td class="variant plain">{esc(row["name"])}{tag}'
                 + (f"<small>{esc(detail)}</small>" if detail else "") + "</td>"]
        for memory in ("flash", "sram"):
            cells += [num_cell(esc(format_kib(row[f"{memory}_needed"]))),
                      num_cell(esc(format_kib(row[f"{memory}_available"]))), _margin(row[f"{memory}_margin"])]
        cells.append(_fits(row))
        body.append(('<tr class="target">' if row["target"] else "<tr>") + "".join(cells) + "</tr>")
    variant = mcu.get("variant")
    noun = variant_label(metrics, variant) if variant else "the deployed model"
    flash, sram = to_number(mcu.get("flash_bytes")), to_number(mcu.get("peak_sram_bytes"))
    rt_flash, rt_sram = to_number(mcu.get("runtime_flash_bytes")), to_number(mcu.get("runtime_sram_bytes"))
    flash_text = ("Flash needed = the model file"
                  + (f" ({format_kib(flash)} KB" + (f", {mcu['artifact']}" if mcu.get("artifact") else "") + ")"
                     if flash is not None else "")
                  + (f" + {format_kib(rt_flash)} KB runtime allowance" if rt_flash is not None else ""))
    sram_text = ("SRAM needed = the peak of live activations"
                 + (f" ({format_kib(sram)} KB" + (f", at {mcu['peak_node']}" if mcu.get("peak_node") else "") + ")"
                    if sram is not None else "")
                 + (f" + {format_kib(rt_sram)} KB runtime allowance" if rt_sram is not None else ""))
    note = (f"{noun} on each board. {flash_text}; {sram_text}. The runtime allowance covers the inference "
            "runtime's code and RAM (an interpreter such as TensorFlow Lite Micro, its kernels and arena overhead) "
            "and is an assumption, not a measurement; the rest of the firmware needs room too. "
            "Here 1 KB = 1024 bytes, as in the boards' datasheets; a negative margin is how much is missing."
            + (" The target board is highlighted." if any(row["target"] for row in rows) else ""))
    return "<h3>Does it fit a microcontroller?</h3>" + table(head, body, "mcu") + f'<p class="note">{esc(note)}</p>'


# --- (iv) energy ----------------------------------------------------------------------------------


def energy_block(metrics: dict) -> str:
    """(iv) Estimated inference energy per variant and tracked training energy per stage."""
    parts = [inference_energy_table(metrics), training_energy_table(metrics)]
    return "".join(p for p in parts if p)


def inference_energy_table(metrics: dict) -> str:
    """Estimated energy of 1000 inferences per variant (mJ) with its compute / weight / activation breakdown."""
    rows = energy_rows(metrics)
    if not rows:
        return ""
    colors = variant_colors(metrics)
    with_teacher = any(row["vs_teacher"] is not None for row in rows)
    head = ('<tr><th rowspan="2">Variant</th><th class="group" colspan="4">Estimated energy per 1000 inferences (mJ)'
            "</th>" + ('<th rowspan="2">Less than teacher</th>' if with_teacher else "") + "</tr>"
            "<tr><th>total</th><th>compute</th><th>weights</th><th>activations</th></tr>")
    body = []
    for row in rows:
        # µJ per inference = mJ per 1000 inferences
        details = [f"{row['dtype']} arithmetic" if row["dtype"] else "",
                   f"memory {row['memory']}" if row["memory"] else ""]
        cells = [variant_cell(row["label"], colors.get(row["variant"], "#888888"), details),
                 num_cell(esc(format_sig(row["total_uj"])), "strong")]
        cells += [num_cell(esc(_with_share(row[f"{key}_uj"], row["total_uj"])))
                  for key in ("compute", "weight", "activation")]
        if with_teacher:
            cells.append(num_cell(esc(format_factor(row["vs_teacher"]))))
        body.append("<tr>" + "".join(cells) + "</tr>")
    sources = list(dict.fromkeys(str(row["source"]) for row in rows if row["source"]))
    note = ("An estimate, not a measurement: multiply-accumulates × energy per MAC at the variant's data type, "
            "plus bytes of weights and activations moved × energy per byte of the memory they are read from. "
            "It leaves out leakage, clocking and instruction overhead, so use it to compare variants, not to "
            "predict battery life. Share of the total in brackets."
            + (f" Source: {'; '.join(sources)}." if sources else ""))
    return ('<h3>Energy per inference <span class="tag estimate">estimate</span></h3>'
            + table(head, body, "energy") + f'<p class="note">{esc(note)}</p>')


def _with_share(part: float | None, total: float) -> str:
    """``0.412 (68 %)``: a breakdown part in mJ per 1000 inferences with its share of the total."""
    if part is None:
        return MISSING
    return format_sig(part) + (f" ({100 * part / total:.0f} %)" if total else "")


def training_energy_table(metrics: dict) -> str:
    """Energy, emissions and duration tracked for each training stage, with a student-vs-teacher line."""
    rows = training_energy_rows(metrics)
    if not rows:
        return ""
    head = ("<tr><th>Training stage</th><th>Energy (kWh)</th><th>Emissions (g CO₂-eq)</th><th>Duration (s)</th>"
            "<th class=\"text\">Method</th><th class=\"text\">Kind</th></tr>")
    body = []
    for row in rows:
        kind = "estimate" if row["estimate"] or row["estimate"] is None else "measured"
        body.append(f'<tr><td class="variant plain">{esc(row["label"])}</td>'
                    + num_cell(esc(format_sig(row["energy_kwh"])))
                    + num_cell(esc(format_sig(row["emissions_g"])))
                    + num_cell(esc(MISSING if row["duration_s"] is None else f"{row['duration_s']:,.0f}"))
                    + f'<td class="text">{esc(row["method"] or MISSING)}</td>'
                    + f'<td class="text"><span class="tag {kind}">{kind}</span></td>'
                    + "</tr>")
    sources = list(dict.fromkeys(str(row["source"]) for row in rows if row["source"]))
    comparison = training_comparison(metrics)
    note = ((comparison + " " if comparison else "")
            + "Tracked while each stage trained; where the CPU exposes no power counters the tracker estimates "
              "power from the processor's rated power and load, and those rows are labelled estimate."
            + (f" Source: {'; '.join(sources)}." if sources else ""))
    return "<h3>Training energy</h3>" + table(head, body, "training-energy") + f'<p class="note">{esc(note)}</p>'


def training_comparison(metrics: dict) -> str:
    """``Student vs teacher: distilling the student used 0.0012 kWh, 2.5× less than training the teacher (…).``"""
    rows = {row["stage"]: row for row in training_energy_rows(metrics)}
    teacher, student = rows.get("teacher"), rows.get("student")
    if not teacher or not student or not teacher["energy_kwh"] or student["energy_kwh"] is None:
        return ""
    ratio = student["energy_kwh"] / teacher["energy_kwh"]
    if ratio <= 0:
        return ""
    relation = f"{format_factor(1 / ratio)} less than" if ratio < 1 else f"{format_factor(ratio)} as much as"
    return (f"Student vs teacher: training the {variant_noun(metrics, 'student')} used "
            f"{format_sig(student['energy_kwh'])} kWh, {relation} training the teacher "
            f"({format_sig(teacher['energy_kwh'])} kWh).")


# --- (v) compression details ----------------------------------------------------------------------


def compression_block(metrics: dict) -> str:
    """(v) The pruning schedule of each pruned model, the low-rank ranks per layer and the QAT settings."""
    compression = metrics.get("compression") or {}
    parts = [prune_table(compression.get(key), variant_noun(metrics, model))
             for key, model in PRUNE_STAGES.items()]
    parts += [lowrank_table(compression.get("lowrank")), qat_facts(compression.get("qat"))]
    parts = [p for p in parts if p]
    return "<h3>Compression details</h3>" + "".join(parts) if parts else ""


def _accuracy_pct(value) -> str:
    """A validation accuracy as a percentage, whether stored as a fraction or already in %."""
    number = to_number(value)
    if number is None:
        return MISSING
    return f"{100 * number if number <= 1 else number:.1f}"


def prune_table(rows, noun: str) -> str:
    """The prune-and-fine-tune steps of one model: sparsity, parameters, MACs and validation accuracy."""
    rows = [r for r in rows or [] if isinstance(r, dict)]
    if not rows:
        return ""
    nonzero = any(r.get("nonzero_params") is not None for r in rows)
    head = ("<tr><th>Step</th><th>Weights zero %</th><th>Params</th>" + ("<th>Non-zero params</th>" if nonzero else "")
            + "<th>MACs</th><th>Val accuracy %</th></tr>")
    body = []
    for r in rows:
        sparsity = to_number(r.get("sparsity"))
        body.append("<tr>" + num_cell(esc(r.get("step", MISSING)))
                    + num_cell(esc(format_percent(sparsity)))
                    + num_cell(esc(format_count(to_number(r.get("params")))))
                    + (num_cell(esc(format_count(to_number(r.get("nonzero_params"))))) if nonzero else "")
                    + num_cell(esc(format_count(to_number(r.get("macs")))))
                    + num_cell(esc(_accuracy_pct(r.get("val_accuracy")))) + "</tr>")
    return (f'<div class="detail"><h4>Pruning the {esc(noun)}</h4>'
            + table(head, body, "compact") + "</div>")


def lowrank_table(lowrank) -> str:
    """Per-layer ranks of the low-rank factorisation, with the parameter count before and after."""
    if not isinstance(lowrank, dict) or not lowrank.get("layers"):
        return ""
    head = ("<tr><th>Layer</th><th>Shape</th><th>Rank</th><th>Energy kept %</th>"
            "<th>Params before</th><th>Params after</th></tr>")
    body = []
    for layer in lowrank["layers"]:
        if not isinstance(layer, dict):
            continue
        shape = "×".join(str(d) for d in layer.get("shape") or []) or MISSING
        rank, full = layer.get("rank"), layer.get("full_rank")
        if rank is None:
            ranked = MISSING
        else:
            ranked = f"{rank} of {full}" if full is not None else str(rank)
        if layer.get("factorized") is False:
            ranked += " (kept)"
        kind = f"<small>{esc(layer['type'])}</small>" if layer.get("type") else ""
        body.append(f'<tr><td class="variant plain">{esc(layer.get("layer", MISSING))}{kind}</td>'
                    + num_cell(esc(shape)) + num_cell(esc(ranked))
                    + num_cell(esc(format_percent(to_number(layer.get("energy")))))
                    + num_cell(esc(format_count(to_number(layer.get("params_before")))))
                    + num_cell(esc(format_count(to_number(layer.get("params_after"))))) + "</tr>")
    before, after = to_number(lowrank.get("params_before")), to_number(lowrank.get("params_after"))
    total = ""
    if before and after:
        total = (f"The model goes from {format_count(before)} to {format_count(after)} parameters "
                 f"({format_factor(before / after)} fewer). ")
    note = (total + "Each factorised layer is replaced by two thin layers of the given rank, the smallest that keeps "
            "the stated share of the weight matrix's energy (sum of squared singular values); "
            "“kept” layers would not have become smaller.")
    return ('<div class="detail"><h4>Low-rank factorisation</h4>' + table(head, body, "compact")
            + f'<p class="note">{esc(note)}</p></div>')


def qat_facts(qat) -> str:
    """The quantization-aware-training settings and results as a short list of facts (scalars only)."""
    if not isinstance(qat, dict):
        return ""
    items = []
    for key, value in qat.items():
        if isinstance(value, (list, tuple)):
            shown = f"{len(value)} entries" if value and not all(isinstance(v, (str, int, float)) for v in value) \
                else ", ".join(str(v) for v in value) or MISSING
        elif isinstance(value, dict):
            shown = ", ".join(f"{k}: {_scalar(v)}" for k, v in value.items()
                              if not isinstance(v, (list, dict))) or MISSING
        else:
            shown = _scalar(value)
        items.append(f"<dt>{esc(key.replace('_', ' '))}</dt><dd>{esc(shown)}</dd>")
    if not items:
        return ""
    return f'<div class="detail"><h4>Quantization-aware training</h4><dl class="facts">{"".join(items)}</dl></div>'


def _scalar(value) -> str:
    """A fact value: floats with up to four significant digits, a dash for None."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

