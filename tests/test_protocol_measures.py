"""protocol_measures and report.measures_markdown: rho from DeepFool clipped to the image
range and unclipped, each with the fraction of images DeepFool fooled beside it."""

import types

import numpy as np
import pytest
from test_measures import BATCH, eval_data, trained_mlp

from robustgan import config as configlib
from robustgan import report
from robustgan.evaluate import measures, protocol

RANGE = (0.0, 1.0)


def test_protocol_reports_clipped_and_unclipped_rho_with_fooled_fractions():
    clf = trained_mlp()
    x, y = eval_data()
    pixels = np.round(x * 255).astype(np.uint8)
    config = configlib.base_config()
    config.data.value_range = RANGE
    config.eval.update(measure_examples=len(y), batch_size=BATCH, eps=0.1, pgd_steps=2,
                       curve_eps_fractions=(0.0, 1.0))
    dataset = types.SimpleNamespace(x_test=pixels, y_test=y, num_classes=4)
    out = protocol.protocol_measures(config, dataset, clf, None)

    assert out["deepfool_steps"] == configlib.base_config().eval.deepfool_steps == 50
    for name, norm in (("rho_2", "l2"), ("rho_inf", "linf")):
        for suffix, clip in (("", True), ("_unclipped", False)):
            expected = measures.rho(clf, pixels, y, norm, batch_size=BATCH, value_range=RANGE,
                                    max_iter=50, clip=clip)
            assert out[name + suffix] == pytest.approx(expected["rho"], rel=1e-6)
            assert out[f"{name}{suffix}_fooled_fraction"] == expected["fooled"]

    # The table shows every rho with its fooled fraction, in percent.
    out["rho_inf_unclipped_fooled_fraction"] = 0.75  # one below 100%, as a robust model's
    row = report.measures_markdown({"mlp": out}).splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "mlp"
    assert cells[1] == f"{out['rho_2']:.4f} ({100 * out['rho_2_fooled_fraction']:.0f}%)"
    assert cells[2] == f"{out['rho_inf']:.4f} ({100 * out['rho_inf_fooled_fraction']:.0f}%)"
    assert cells[-2] == (f"{out['rho_2_unclipped']:.4f} "
                         f"({100 * out['rho_2_unclipped_fooled_fraction']:.0f}%)")
    assert cells[-1] == f"{out['rho_inf_unclipped']:.4f} (75%)"
