"""The op description and what is made from it: the generated C matches pyautodiff/opdefs.py, and
every op code has all of its parts (reference, test row, VJP, JVP, second-order rule, the
differentiable rules), so an op added without one fails here, naming the op and the part."""
import os

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff import _genops, opdefs
from pyautodiff._capi import ffi, lib
from pyautodiff.reference import REFERENCE
import test_ops_models as op_models
from op_table import ROWS

TESTED = {r.ref for r in ROWS} | {c[1] for c in op_models.CASES}   # the two op tables


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_files_match_the_op_rows():
    # the repository's files (the package may be installed elsewhere, as in the sanitizer run)
    stale = [p for p, text in _genops.outputs(REPO).items() if open(p).read() != text]
    assert not stale, f"out of date, run `python -m pyautodiff._genops`: {stale}"


def _op_codes():
    name = ffi.new("char **")
    for code in range(1, lib.AD_OP_COUNT):
        if code == lib.AD_OP_CUSTOM:
            continue   # a custom function's rules and reference are its author's (tests/test_custom.py)
        bits = lib.ad_op_rules(code, name)
        yield code, ffi.string(name[0]).decode(), bits


ELEMENTWISE_REF = {getattr(lib, op.code): op.reference for op in opdefs.ALL}
PARTS = [(lib.AD_RULE_VJP, "VJP"), (lib.AD_RULE_JVP, "JVP"), (lib.AD_RULE_SECOND_ORDER, "second-order rule"),
         (lib.AD_RULE_VJP_RECORDED, "differentiable VJP rule"), (lib.AD_RULE_JVP_RECORDED, "differentiable JVP rule")]


@pytest.mark.parametrize("code,name,bits", list(_op_codes()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_op_has_every_part(code, name, bits):
    missing = [part for bit, part in PARTS if not bits & bit]
    ref = ELEMENTWISE_REF.get(code, name)
    if ref not in REFERENCE:
        missing.append(f"NumPy reference {ref!r} (pyautodiff/reference/)")
    if ref not in TESTED:
        missing.append(f"test row for reference {ref!r} (tests/op_table.py or test_ops_models.py)")
    assert not missing, f"op {name!r} (code {code}) lacks: {', '.join(missing)}"


def test_every_public_row_is_a_function_with_its_doc():
    for op in opdefs.ALL:
        if op.public:
            f = getattr(ad, op.name)
            assert f.__name__ == op.name and f.__doc__ == op.doc


def test_op_rules_rejects_codes_out_of_range():
    name = ffi.new("char **")
    for code in (0, -1, lib.AD_OP_COUNT):
        assert lib.ad_op_rules(code, name) == -lib.AD_ERR_VALUE


def test_reads_flags_come_from_the_formulas():
    # exp's derivative is its output, log's reads its input, add's reads nothing: so x*w + b keeps
    # no value and exp(x) keeps only its own
    rows = {op.name: op for op in opdefs.ALL}
    assert _genops.reads_flags(rows["exp"]) == ["AD_READS_KNOWN", "AD_READS_OUT"]
    assert _genops.reads_flags(rows["log"]) == ["AD_READS_KNOWN", "AD_READS_IN0"]
    assert _genops.reads_flags(rows["add"]) == ["AD_READS_KNOWN"]
    assert _genops.reads_flags(rows["multiply"]) == ["AD_READS_KNOWN", "AD_READS_IN0", "AD_READS_IN1"]


def test_second_order_terms_are_the_derivatives_of_the_rules():
    # tanh: d = 1 - y^2, so d' = -2 y d = -2 y (1 - y^2); checked numerically through the C kernel
    # at a few points against the closed form (the symbolic derivative is what the kernel runs)
    x = np.array([-1.5, 0.0, 0.3, 2.0])
    h = ad.hessian(lambda v: ad.tanh(v).sum())(x)
    t = np.tanh(x)
    np.testing.assert_allclose(np.diag(np.asarray(h)), -2 * t * (1 - t * t), rtol=1e-14, atol=1e-15)


def test_formula_errors_name_the_op():
    bad = opdefs.Op("bad", "unary", "x", ("frobnicate(x)",), "")
    with pytest.raises(_genops.FormulaError, match="bad.*frobnicate"):
        _genops.derivatives(bad)
