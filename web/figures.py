"""Bokeh figures of the run and compare pages, built empty: the page's script fills them.

Each builder knows column names only. Every data source is named, so the page's script
finds it (``Bokeh.documents[0].get_model_by_name``) and loads the history from the REST
routes, then ``stream``s live rows into it: one path for a finished run and a live one,
and the page's cost stays flat however long the run (the server downsamples the history).
The column names below are the contract with ``web/js/src/run.js``.
"""
from __future__ import annotations

import math

from bokeh.models import ColumnDataSource, FactorRange, HoverTool, PrintfTickFormatter, Range1d, Span
from bokeh.plotting import figure

from monitor.detectors.dead_relu import DEAD_FRACTION, RELU_FAMILY, SUSPECT_FRACTION
from monitor.detectors.saturation import BOUNDED, SAT_FRACTION
from monitor.detectors.update_ratio import NORM_WORDS
from monitor.sweeps.advice import BORDER_SHARE

#: Update/weight ratio a healthy layer sits near (CS231n: about 1e-3 per step; far above
#: means the learning rate is too high, far below too low).
UPDATE_RATIO_REFERENCE = 1e-3
#: The dead-ReLU rule's own bars (monitor.detectors.dead_relu): a layer past the first is
#: watched closely, past the second flagged; the panel colours its bars by them.
DEAD_THRESHOLDS = {"suspect": SUSPECT_FRACTION, "dead": DEAD_FRACTION, "modules": list(RELU_FAMILY),
                   # the saturation rule's bar (monitor.detectors.saturation), and the modules a model
                   # ends with on purpose, whose last one it leaves alone
                   "saturated": SAT_FRACTION, "bounded": list(BOUNDED)}

#: The update-ratio rule's reading of a parameter: weight tensors only (its NORM_WORDS are no weights).
RATIO_PANEL = {"norms": list(NORM_WORDS)}

QUANTILES = tuple(f"q{i}" for i in range(7))
SCALAR_COLUMNS = ("step", "value", "smooth")
BAND_COLUMNS = ("step", "min", "max", "mean", *QUANTILES)

TRAIN_COLOR, VAL_COLOR, FLAG_COLOR = "#1f6fb4", "#e8710a", "#c5221f"
BAND_COLOR = "#1f6fb4"
TOOLS = "pan,box_zoom,wheel_zoom,reset,save"
#: Tick labels read at a glance: 3 significant digits, 0.0002 rather than -2.000e-4
#: (printf's %g: plain down to 1e-4, then 2e-05; the same for large values).
READABLE = "%.3g"


def _source(name: str, columns) -> ColumnDataSource:
    return ColumnDataSource({column: [] for column in columns}, name=name)


def _figure(name: str, title: str | None, height: int = 260, x_label: str = "step", **options):
    """A figure with the page's look; ``title`` None where the card's heading says it."""
    fig = figure(name=name, title=title, height=height, sizing_mode="stretch_width", tools=TOOLS,
                 toolbar_location="above", output_backend="canvas", **options)
    if title:
        fig.title.text_font_size = "12px"
        fig.title.text_font_style = "normal"
    fig.xaxis.axis_label = x_label
    fig.min_border_left = 60  # y tick labels of different widths would misalign the stacked plots
    fig.toolbar.logo = None
    return fig


def loss_figures() -> list:
    """Training and validation loss on the same axes, raw (faint) and smoothed, with the
    flags as markers: one linear and one log figure over the same sources and x range;
    the page shows one of them (a Bokeh axis cannot change type once drawn)."""
    train = _source("loss_train", SCALAR_COLUMNS)
    val = _source("loss_val", SCALAR_COLUMNS)
    flags = _source("flag_marks", ("step", "y", "kind", "severity", "layer", "message", "color"))
    best = _source("val_best", ("step", "value"))  # the lowest validation loss so far
    ranks = _source("loss_ranks", ("step", "low", "high"))  # a distributed job: its ranks' loss, lowest to highest
    figures = []
    x_range = None
    for axis in ("linear", "log"):
        fig = _figure(f"loss_{axis}", None, height=320, y_axis_type=axis,
                      **({"x_range": x_range} if x_range is not None else {}))
        x_range = fig.x_range
        fig.varea("step", "low", "high", source=ranks, color=TRAIN_COLOR, alpha=0.12)
        fig.line("step", "value", source=train, color=TRAIN_COLOR, alpha=0.25, line_width=1)
        fig.line("step", "smooth", source=train, color=TRAIN_COLOR, line_width=2, legend_label="train")
        # Validation: the points as they are, joined, never smoothed (see run.js).
        fig.line("step", "value", source=val, color=VAL_COLOR, line_width=2, legend_label="validation")
        fig.scatter("step", "value", source=val, color=VAL_COLOR, size=6)
        best_mark = fig.scatter("step", "value", source=best, marker="star", size=16, color=VAL_COLOR,
                                line_color="white")  # named by its hover: no legend entry while there is none
        fig.add_tools(HoverTool(renderers=[best_mark], tooltips=[("best validation loss", "@value"),
                                                                 ("step", "@step")]))
        marks = fig.scatter("step", "y", source=flags, marker="triangle", size=13, color="color",
                            line_color="white", legend_label="flags")
        fig.add_tools(HoverTool(renderers=[marks], tooltips=[("flag", "@kind (@severity)"), ("step", "@step"),
                                                             ("layer", "@layer"), ("", "@message")]))
        fig.legend.location = "top_right"
        fig.legend.click_policy = "hide"
        fig.visible = axis == "linear"
        figures.append(fig)
    return figures


def metric_figure():
    """The metric chosen in the page's menu (accuracy, ...), training and validation."""
    fig = _figure("metric_fig", None, height=260)
    for name, color, label in (("metric_train", TRAIN_COLOR, "train"), ("metric_val", VAL_COLOR, "validation")):
        source = _source(name, SCALAR_COLUMNS)
        if name == "metric_val":  # as they are, with markers (see loss_figures)
            fig.line("step", "value", source=source, color=color, line_width=2, legend_label=label)
            fig.scatter("step", "value", source=source, color=color, size=6)
        else:
            fig.line("step", "value", source=source, color=color, alpha=0.25)
            fig.line("step", "smooth", source=source, color=color, line_width=2, legend_label=label)
    fig.legend.location = "bottom_right"
    return fig


def learning_rate_figure():
    """On a log axis: schedules span orders of magnitude (warm-up, decay steps)."""
    fig = _figure("lr_fig", None, height=260, y_axis_type="log")
    fig.step("step", "value", source=_source("lr", ("step", "value")), mode="after", color="#5f6368", line_width=2)
    # babysit records the rate when it changes: from the last change to the latest step it is
    # held (two points; a constant rate is one recorded point, which a step line cannot draw alone)
    fig.line("step", "value", source=_source("lr_held", ("step", "value")), color="#5f6368", line_width=2)
    return fig


def bands_figure(prefix: str, title: str):
    """A layer's distribution over time, TensorBoard-style: min-max, then the quantile
    bands at ±1.5, ±1 and ±0.5 sigma of the normal CDF, darker towards the median."""
    source = _source(f"{prefix}_bands", BAND_COLUMNS)
    fig = _figure(f"{prefix}_bands_fig", title, height=260)
    fig.varea("step", "min", "max", source=source, color=BAND_COLOR, alpha=0.08)
    for low, high, alpha in (("q0", "q6", 0.15), ("q1", "q5", 0.22), ("q2", "q4", 0.3)):
        fig.varea("step", low, high, source=source, color=BAND_COLOR, alpha=alpha)
    fig.line("step", "q3", source=source, color=BAND_COLOR, line_width=1.5, legend_label="median")
    fig.line("step", "mean", source=source, color="#202124", line_dash="dashed", line_width=1, legend_label="mean")
    fig.yaxis.formatter = PrintfTickFormatter(format=READABLE)
    fig.legend.location = "top_left"
    return fig


def histogram_figure(prefix: str, title: str):
    """The latest sampled histogram of the chosen layer."""
    fig = _figure(f"{prefix}_hist_fig", title, height=260, x_label="value")
    fig.quad(left="left", right="right", top="count", bottom=0,
             source=_source(f"{prefix}_hist", ("left", "right", "count")),
             color=BAND_COLOR, alpha=0.7, line_color="white")
    fig.xaxis.ticker.desired_num_ticks = 4  # tiny gradients have long tick labels
    fig.xaxis.formatter = PrintfTickFormatter(format=READABLE)
    return fig


def dead_units_figure():
    """Where units stop learning, one bar per activation layer: the share of a ReLU layer's
    units never positive over the window (``dead``), the share of a saturating layer's
    values where its slope is nearly 0 (``saturated``: tanh/sigmoid near a bound, GELU/SiLU
    in its flat tail). Each bar is coloured by its rule's bars (``color``: the page's) and
    carries its rule's flagging bar as a tick (``bar``)."""
    dead = _source("dead", ("layer", "dead_frac", "zero_frac", "color", "bar"))
    saturated = _source("saturated", ("layer", "sat_frac", "color", "bar"))
    fig = _figure("dead_fig", None, height=300,
                  x_label="fraction", y_range=FactorRange(name="dead_layers"), x_range=Range1d(0, 1))
    fig.hbar(y="layer", right="zero_frac", height=0.8, source=dead, color="#9aa0a6", alpha=0.4,
             legend_label="zero outputs")
    dead_bars = fig.hbar(y="layer", right="dead_frac", height=0.5, source=dead, color="color",
                         legend_label="dead units")
    saturated_bars = fig.hbar(y="layer", right="sat_frac", height=0.5, source=saturated, color="color",
                              hatch_pattern="/", hatch_color="white", hatch_alpha=0.5, legend_label="saturated")
    for source in (dead, saturated):  # the rule's bar, per row: each rule has its own
        fig.scatter(x="bar", y="layer", source=source, marker="dash", angle=1.5708, size=22, line_width=2,
                    color=FLAG_COLOR)
    fig.add_tools(HoverTool(renderers=[dead_bars], tooltips=[
        ("layer", "@layer"), ("dead units", "@dead_frac{0%}"), ("zero outputs", "@zero_frac{0%}"),
        ("flagged above", "@bar{0%}")]))
    fig.add_tools(HoverTool(renderers=[saturated_bars], tooltips=[
        ("layer", "@layer"), ("saturated", "@sat_frac{0%}"), ("flagged above", "@bar{0%}")]))
    fig.legend.orientation = "horizontal"
    fig.add_layout(fig.legend[0], "above")  # the bars reach the right edge: keep the legend off them
    return fig


def update_ratio_figure():
    """‖Δw‖/‖w‖ per parameter over time on a log axis, with the 1e-3 reference."""
    source = _source("update_ratio", ("xs", "ys", "layer", "color"))
    fig = _figure("update_ratio_fig", None, height=300, y_axis_type="log")
    lines = fig.multi_line("xs", "ys", source=source, color="color", line_width=1.5, alpha=0.85,
                           hover_line_width=3, hover_line_alpha=1.0)
    fig.add_tools(HoverTool(renderers=[lines], tooltips=[("parameter", "@layer")]))
    fig.add_layout(Span(location=UPDATE_RATIO_REFERENCE, dimension="width", line_dash="dashed",
                        line_color="#202124", line_width=1.5))
    return fig


def input_figure():
    """The model input's mean and std: a normalised input sits at 0 and 1 (dashed)."""
    source = _source("inputs", ("step", "mean", "std"))
    fig = _figure("inputs_fig", None, height=260)
    fig.line("step", "mean", source=source, color=TRAIN_COLOR, line_width=2, legend_label="mean")
    fig.line("step", "std", source=source, color=VAL_COLOR, line_width=2, legend_label="std")
    for level in (0.0, 1.0):
        fig.add_layout(Span(location=level, dimension="width", line_dash="dotted", line_color="#5f6368"))
    fig.legend.location = "top_right"
    return fig


def run_page_figures() -> dict:
    """Every figure of the run page, by the name the template places it under."""
    loss_linear, loss_log = loss_figures()
    return {
        "loss_linear": loss_linear, "loss_log": loss_log, "metric": metric_figure(),
        "lr": learning_rate_figure(),
        "act_bands": bands_figure("act", "over time: min-max, ±1.5σ, ±1σ, ±0.5σ bands, median"),
        "act_hist": histogram_figure("act", "latest histogram"),
        "grad_bands": bands_figure("grad", "over time: min-max, ±1.5σ, ±1σ, ±0.5σ bands, median"),
        "grad_hist": histogram_figure("grad", "latest histogram"),
        "dead": dead_units_figure(), "update_ratio": update_ratio_figure(), "inputs": input_figure(),
    }


def compare_figures(runs: list[str]) -> dict:
    """Loss (solid) and validation loss (dashed) of several runs overlaid, one colour each,
    in a linear and a log figure sharing sources ``cmp_loss_<i>`` and ``cmp_val_<i>``."""
    from bokeh.palettes import Category10_10

    out = {}
    x_range = None
    for axis in ("linear", "log"):
        fig = _figure(f"loss_{axis}", None, height=420,
                      y_axis_type=axis, **({"x_range": x_range} if x_range is not None else {}))
        x_range = fig.x_range
        for i, run in enumerate(runs):
            color = Category10_10[i % 10]
            train = out.setdefault(f"train{i}", _source(f"cmp_loss_{i}", SCALAR_COLUMNS))
            val = out.setdefault(f"val{i}", _source(f"cmp_val_{i}", SCALAR_COLUMNS))
            lines = [fig.line("step", "smooth", source=train, color=color, line_width=2, legend_label=run,
                              hover_line_width=4),
                     fig.line("step", "value", source=val, color=color, line_width=2, line_dash="dashed",
                              hover_line_width=4)]  # validation as it is
            fig.scatter("step", "value", source=val, color=color, size=5)
            fig.add_tools(HoverTool(renderers=lines, tooltips=[("run", run), ("step", "@step"), ("loss", "@value")]))
        fig.legend.click_policy = "hide"
        fig.visible = axis == "linear"
        out[axis] = fig
    return {"loss_linear": out["linear"], "loss_log": out["log"]}


def sweep_figures(space: list[dict], direction: str = "minimize") -> dict:
    """The sweep page's figures: every trial's training loss (solid) and validation loss
    (dashed, points marked) on shared axes, one colour per trial (the page colours them by
    a hyper-parameter); and per dimension of the space, each complete trial's best value
    against its value of the dimension (a log axis for a log dimension spanning more than a
    decade), the best starred, pruned and diverged trials marked above them, the outer
    :data:`BORDER_SHARE` of the range shaded (the advice's border). The objective's axis is
    logarithmic when it is minimised (a loss: the good trials sit orders of magnitude below
    a bad one), linear when maximised (an accuracy)."""
    from bokeh.models import BoxAnnotation

    y_axis = "log" if direction == "minimize" else "linear"
    curve_columns = ("xs", "ys", "color", "alpha", "trial", "label", "state")
    train = _source("sweep_train", curve_columns)
    val = _source("sweep_val", curve_columns)
    points = _source("sweep_val_points", ("step", "value", "color", "trial"))
    # An explicit range that the page fits to the trials not ended: a diverged trial's climb
    # to 1e17 would flatten every other curve under auto-ranging.
    curves = _figure("sweep_curves", None, height=380, y_axis_type=y_axis,
                     y_range=Range1d(0.01 if y_axis == "log" else 0.0, 10.0 if y_axis == "log" else 1.0,
                                     name="sweep_curves_y"))
    lines = [curves.multi_line("xs", "ys", source=train, color="color", line_alpha="alpha", line_width=1.5,
                               hover_line_width=3, hover_line_alpha=1.0),
             curves.multi_line("xs", "ys", source=val, color="color", line_alpha="alpha", line_width=2,
                               line_dash="dashed", hover_line_width=4, hover_line_alpha=1.0)]
    curves.scatter("step", "value", source=points, color="color", size=4)
    curves.add_tools(HoverTool(renderers=lines, tooltips=[("trial", "@trial"), ("", "@label"), ("state", "@state")]))
    curves.yaxis.formatter = PrintfTickFormatter(format=READABLE)
    out = {"sweep_curves": curves}
    for i, d in enumerate(space):
        options: dict = {}
        if d["distribution"] == "choice":
            options["x_range"] = FactorRange(factors=[str(c) for c in d["choices"]])
        elif d["log"] and d["high"] / d["low"] > 10:
            options["x_axis_type"] = "log"
        fig = _figure(f"sweep_scatter_{i}", None, height=260, x_label=d["name"], y_axis_type=y_axis, **options)
        done = _source(f"sweep_done_{i}", ("x", "value", "color", "trial", "label"))
        best = _source(f"sweep_best_{i}", ("x", "value", "trial", "label"))
        marked = _source(f"sweep_marked_{i}", ("x", "y", "trial", "label", "state", "reason"))
        dots = fig.scatter("x", "value", source=done, color="color", size=9, line_color="#202124", line_width=0.5)
        stars = fig.scatter("x", "value", source=best, marker="star", size=20, color="#f9ab00", line_color="#202124",
                            legend_label="best")
        crosses = fig.scatter("x", "y", source=marked, marker="x", size=12, line_width=2, color=FLAG_COLOR,
                              legend_label="pruned, diverged or failed: no value to rank")
        fig.add_tools(HoverTool(renderers=[dots, stars], tooltips=[("trial", "@trial"), ("", "@label"),
                                                                   ("value", "@value{%.4g}")],
                                formatters={"@value": "printf"}))
        fig.add_tools(HoverTool(renderers=[crosses], tooltips=[("trial", "@trial"), ("", "@label"),
                                                               ("state", "@state"), ("why", "@reason")]))
        if d["distribution"] != "choice":
            for left, right in _border_bands(d):
                fig.add_layout(BoxAnnotation(left=left, right=right, fill_color="#9aa0a6", fill_alpha=0.12,
                                             line_alpha=0))
        fig.yaxis.formatter = PrintfTickFormatter(format=READABLE)
        fig.legend.orientation = "horizontal"
        fig.legend.label_text_font_size = "11px"
        fig.add_layout(fig.legend[0], "above")  # off the points
        out[f"sweep_scatter_{i}"] = fig
    return out


def _border_bands(d: dict) -> list[tuple[float, float]]:
    """The outer :data:`BORDER_SHARE` of a range at each end, on the dimension's scale."""
    low, high = float(d["low"]), float(d["high"])
    if d["log"]:
        width = math.log10(high / low)
        return [(low, low * 10 ** (BORDER_SHARE * width)), (high / 10 ** (BORDER_SHARE * width), high)]
    width = high - low
    return [(low, low + BORDER_SHARE * width), (high - BORDER_SHARE * width, high)]
