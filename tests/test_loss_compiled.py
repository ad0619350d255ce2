"""The compiled loss head (torch.compile of each chunk's elementwise work) against the references.

On CPUs torch.compile generates C++; on GPUs it generates Triton from the same graph, which these tests cannot
run. What they pin down is the graph: the maths, the dtypes it reads and writes, one graph for every chunk length.
"""

import re
import shutil

import pytest
import torch
import torch._dynamo.utils

from test_loss import make_inputs, make_prior, reference
from ual.loss import smoothed_cross_entropy
from ual.trainer import resolve_loss_compile

pytestmark = pytest.mark.slow  # each new graph compiles for a few seconds

if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
    pytest.skip("torch.compile on a CPU needs a C++ compiler and none is installed", allow_module_level=True)


@pytest.fixture(autouse=True)
def _fresh_graphs():
    """Each test starts from no compiled graph. A run compiles a handful (with/without gradient, token weights),
    but this module tries every scale, cap and dtype in one process, past dynamo's recompile limit, after which it
    would silently run the graph uncompiled."""
    import ual.loss

    torch._dynamo.reset()
    ual.loss._compiled_chunk_terms = None
    yield


@pytest.mark.parametrize("convention", ["paper", "uniform"])
@pytest.mark.parametrize("bias, logit_scale, weighted, softcap", [(False, 1.0, False, None), (True, 1.7, False, None),
                                                                   (False, 1.0, True, None), (True, 0.5, False, 2.0)])
def test_compiled_matches_float64_reference(convention, bias, logit_scale, weighted, softcap):
    hidden, weight, b, labels, eps = make_inputs(bias=bias)
    params = [hidden, weight] + ([b] if bias else [])
    token_weight = 1 / torch.arange(1, labels.shape[0] + 1, dtype=torch.float64) if weighted else None
    out = smoothed_cross_entropy(
        hidden, weight, labels, eps, convention=convention, bias=b, chunk_size=7, logit_scale=logit_scale,
        softcap=softcap, compiled=True, token_weight=token_weight,
    )
    grads = torch.autograd.grad(out.loss.mean(), params)
    ref = reference(hidden, weight, labels, eps, convention, b, scale=logit_scale, softcap=softcap)
    ref = ref * (1 if token_weight is None else token_weight)
    ref_grads = torch.autograd.grad(ref.mean(), params)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_compiled_prior_smoothing_matches_float64_reference():
    """The unigram-prior target through the compiled chunk (forward products) and the eager recompute (per-token)."""
    hidden, weight, b, labels, eps = make_inputs(bias=True)
    prior, params = make_prior(), [hidden, weight, b]
    token_weight = 1 / torch.arange(1, labels.shape[0] + 1, dtype=torch.float64)
    upstream = torch.randn(labels.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for up in (torch.full_like(upstream, 1 / len(upstream)), upstream):
        out = smoothed_cross_entropy(hidden, weight, labels, eps, bias=b, chunk_size=7, compiled=True,
                                     token_weight=token_weight, prior=prior)
        grads = torch.autograd.grad((out.loss * up).sum(), params)
        ref = reference(hidden, weight, labels, eps, None, b, prior=prior) * token_weight
        ref_grads = torch.autograd.grad((ref * up).sum(), params)
        torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_compiled_metrics_and_no_grad_forward_match_eager():
    hidden, weight, _, labels, eps = make_inputs(n=61)
    with torch.no_grad():
        eager = smoothed_cross_entropy(hidden, weight, labels, eps, chunk_size=8)
        fused = smoothed_cross_entropy(hidden, weight, labels, eps, chunk_size=8, compiled=True)
    torch.testing.assert_close(fused.loss, eager.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.entropy, eager.entropy, rtol=1e-10, atol=1e-10)
    assert torch.equal(fused.is_top1, eager.is_top1)


def test_compiled_per_token_upstream_recomputes_exactly():
    hidden, weight, _, labels, eps = make_inputs()
    upstream = torch.randn(labels.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = smoothed_cross_entropy(hidden, weight, labels, eps, convention="uniform", chunk_size=10, compiled=True)
    grads = torch.autograd.grad((out.loss * upstream).sum(), [hidden, weight])
    ref = reference(hidden, weight, labels, eps, "uniform")
    for got, want in zip(grads, torch.autograd.grad((ref * upstream).sum(), [hidden, weight])):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_compiled_bfloat16_reads_the_products_dtype_and_matches_eager():
    """The GPU case: bf16 weight and hidden; the compiled graph upcasts inside and returns dL/dz in bf16."""
    hidden, weight, _, labels, eps = make_inputs(n=64, h=32, v=301, dtype=torch.float32)
    results = []
    for compiled in (False, True):
        h16 = hidden.detach().bfloat16().requires_grad_()
        w16 = weight.detach().bfloat16().requires_grad_()
        out = smoothed_cross_entropy(h16, w16, labels, eps.float(), chunk_size=24, compiled=compiled)
        out.loss.mean().backward()
        assert out.loss.dtype == torch.float32 and h16.grad.dtype == w16.grad.dtype == torch.bfloat16
        results.append((out.loss.detach(), h16.grad, w16.grad))
    (loss_e, gh_e, gw_e), (loss_c, gh_c, gw_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)  # same float32 maths on the same bf16 logits
    torch.testing.assert_close(gh_c, gh_e, rtol=2e-2, atol=1e-4)  # dL/dz rounded to bf16 before the products
    torch.testing.assert_close(gw_c, gw_e, rtol=2e-2, atol=1e-4)
    ref = reference(hidden.bfloat16().double(), weight.bfloat16().double(), labels, eps, "paper")
    # the logits themselves are a bf16 product (as in TRL's head and the model's own lm_head): ~3 digits
    torch.testing.assert_close(loss_c.double(), ref, rtol=1e-2, atol=0)


def test_one_graph_serves_every_chunk_length():
    """The last chunk of a batch is shorter, and batches differ in length: neither may trigger a recompile."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters["stats"]
    start = counters["unique_graphs"]
    for n, chunk in ((53, 7), (40, 7), (100, 9), (23, 5)):  # last chunks 4, 5, 1 (n % chunk), 3 tokens
        hidden, weight, _, labels, eps = make_inputs(n=n)
        with torch.no_grad():
            smoothed_cross_entropy(hidden, weight, labels, eps, chunk_size=chunk, compiled=True)
    # one graph for the lengths, plus at most one for a chunk of a single token (torch specialises size 1)
    assert counters["unique_graphs"] - start <= 2


def test_loss_compile_resolution_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_loss_compile(None, cpu) is False
    assert resolve_loss_compile(False, cuda) is False
    assert resolve_loss_compile(True, cpu) is True  # this machine has a compiler (the module skips otherwise)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "triton" else None)
    assert resolve_loss_compile(None, cuda) is True
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert resolve_loss_compile(None, cuda) is False
    with pytest.raises(ValueError, match="loss_compile=True on CUDA needs Triton"):
        resolve_loss_compile(True, cuda)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C.. compiler"):
        resolve_loss_compile(True, cpu)


@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_graph_writes_one_block_in_the_weights_dtype(weighted):
    """The point of compiling: of all [chunk, V] buffers, only dL/dz is written, in bf16 for a bf16 model (eager
    keeps float32 logits and exponentials: two float32 blocks). Read from the code inductor generates."""
    from torch._inductor.utils import run_and_get_code

    import ual.loss

    torch._dynamo.reset()
    ual.loss._compiled_chunk_terms = None
    n, vocab = 48, 1009
    z = torch.randn(n, vocab).bfloat16()
    labels, eps = torch.randint(0, vocab, (n,)), torch.rand(n) * 0.3
    weight = 1 / torch.randint(1, 9, (n,)).float() if weighted else None  # sample normalisation: no extra block
    _, code = run_and_get_code(ual.loss._compiled_terms, z, labels, eps, weight, "paper", 1.0, torch.bfloat16)
    blocks = re.findall(rf"empty_strided_\w+\(\(\w+, {vocab}\), \({vocab}, 1\), torch\.(\w+)\)", "\n".join(code))
    assert blocks == ["bfloat16"]
