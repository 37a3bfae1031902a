"""The training loss without the full logits: the output layer and cross-entropy fused, chunk by chunk.

Shapes: N target tokens with a label, D output-layer input size, V vocabulary size, C chunk rows.

For `loss = sum_n CE(W o_n + b, y_n)` the gradient with respect to the logits is `softmax(W o_n + b) - onehot(y_n)`,
known as soon as the logits are. So the forward pass computes, for C rows at a time, the logits, the loss and
the gradients of `o`, `W` and `b`, and keeps only the gradients (N x D + V x D + V): the N x V logits, their
log-softmax and its gradient (three N x V tensors in the plain path, 65 MB each for 2,000 tokens at V = 8,000)
never exist at once, and the log-softmax backward pass is not needed. The loss comes from the softmax itself
(one fused pass over the logits) rather than from a log-softmax and its exp: PyTorch's CPU exp costs about 4x
a whole softmax. The same three matrix products as the
plain path; the backward pass only scales the stored gradients. The idea of Liger-Kernel's fused linear
cross-entropy, in plain PyTorch.

Under bf16 autocast the three products run in bf16 (`matmul_dtype`), where CPUs with AMX or AVX512-BF16 and GPUs
are several times faster, while the softmax, the loss and the weight and bias gradients stay float32, as autocast
keeps `cross_entropy` in float32.
"""

from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .mixed_precision import without_autocast
from .onednn_products import onednn_linear, onednn_runs
from .workspace import workspace

# A CPU core's level-2 cache at or above which float32 products take 128-row chunks, below it 512 (`chunk_rows`).
LARGE_L2_CACHE = 2 * 2**20
# Float32 products on oneDNN take a multiple of this many rows: at most 512 / 64 = 8 shapes per product.
ONEDNN_ROW_MULTIPLE = 64


class LinearCrossEntropy(torch.autograd.Function):
    """`sum_n CE(features_n W^T + b, labels_n)` with gradients computed in the forward pass.

    With label smoothing e, the target distribution is `(1 - e) onehot(y) + e / V`, as in PyTorch's `cross_entropy`
    and Trainer's `label_smoothing_factor`: the loss of a row is `logsumexp(z) - (1 - e) z_y - (e / V) sum_v z_v`
    and its gradient `softmax(z) - (1 - e) onehot(y) - e / V`. The uniform part is the same for every row and
    vocabulary entry, so it is added once after the chunks, through sums of `W` and of the features.
    """

    @staticmethod
    def forward(ctx, features, weight, bias, labels, chunk_size, label_smoothing, matmul_dtype):
        """features N x D, weight V x D, bias V or None, labels N (no -100: select the labelled rows first);
        matmul_dtype: the products' dtype. The logits, the loss and the weight and bias gradients are in the
        weight's dtype, the features' gradient in theirs."""
        matmul_features, matmul_weight = features.to(matmul_dtype), weight.to(matmul_dtype)  # no copy if the same
        matmul_bias = None if bias is None else bias.to(matmul_dtype)
        num_rows = features.size(0)
        # oneDNN, which runs the CPU's bf16 products and here its float32 ones (`onednn_products.py`), keeps a
        # compiled primitive for each shape it meets: a last chunk of each batch's own size made hundreds (bf16, 150
        # training steps: peak memory 2.1 GB, against 1.05 GB with one chunk size). So the last chunk is padded with
        # zero rows, whose gradient is 0: to a whole chunk with low-precision products, to a multiple of
        # ONEDNN_ROW_MULTIPLE rows with float32 ones on oneDNN (a few shapes, a few rows of extra work).
        on_onednn = matmul_dtype == torch.float32 and onednn_runs(features, weight)
        multiple = ONEDNN_ROW_MULTIPLE if on_onednn else 1 if matmul_dtype == torch.float32 else chunk_size
        padding = -num_rows % multiple
        if padding:
            matmul_features, labels = F.pad(matmul_features, (0, 0, 0, padding)), F.pad(labels, (0, padding))
        grad_features = torch.empty_like(matmul_features)  # N x D
        grad_weight = torch.zeros_like(weight)  # V x D
        grad_bias = None if bias is None else torch.zeros_like(bias)  # V
        loss = weight.new_zeros(())
        for start in range(0, num_rows, chunk_size):
            rows = slice(start, start + chunk_size)
            chunk = matmul_features[rows]
            # The logits on oneDNN, or in a reused buffer (`workspace.py`: no fresh pages each chunk) as the softmax.
            if on_onednn:
                product = onednn_linear(chunk, matmul_weight, matmul_bias)  # C x V
            else:
                product = workspace("logits", (chunk.size(0), weight.size(0)), chunk)
                if matmul_bias is None:
                    torch.mm(chunk, matmul_weight.t(), out=product)
                else:
                    torch.addmm(matmul_bias, chunk, matmul_weight.t(), out=product)
            logits = product.to(weight.dtype)
            targets = labels[rows].unsqueeze(1)  # C x 1
            grad_logits = torch.softmax(logits, dim=-1, out=workspace("probabilities", logits.shape, logits))
            # -log p(y) = logsumexp(logits) - logit_y, with logsumexp = max(logits) - log(max p): the softmax's
            # largest probability is 1 / sum(exp(logits - max)), never below 1 / V, so nothing underflows.
            log_sum_exp = logits.amax(dim=-1) - grad_logits.amax(dim=-1).log()  # C
            real = num_rows - start  # rows of this chunk that are not padding, if fewer than C
            loss += (log_sum_exp - (1 - label_smoothing) * logits.gather(1, targets).squeeze(1))[:real].sum()
            # softmax - (1 - e) onehot
            grad_logits.scatter_add_(1, targets, grad_logits.new_full(targets.shape, label_smoothing - 1))
            grad_logits[real:] = 0
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=0)
            grad_logits = grad_logits.to(matmul_dtype)
            torch.mm(grad_logits, matmul_weight, out=grad_features[rows])
            if matmul_dtype == weight.dtype:
                grad_weight.addmm_(grad_logits.t(), matmul_features[rows])
            else:  # each chunk's product summed in the weight's precision, not rounded to matmul_dtype
                grad_weight += torch.mm(grad_logits.t(), matmul_features[rows])
        grad_features = grad_features[:num_rows].to(features.dtype)
        if label_smoothing:
            uniform = label_smoothing / weight.size(0)  # e / V
            weight_sum, feature_sum = weight.sum(dim=0), features.sum(dim=0, dtype=weight.dtype)  # D each
            bias_sum = 0.0 if bias is None else bias.sum() * features.size(0)
            loss -= uniform * (feature_sum @ weight_sum + bias_sum)  # (e / V) sum_n sum_v z_nv
            grad_features -= uniform * weight_sum
            grad_weight -= uniform * feature_sum
            if grad_bias is not None:
                grad_bias -= uniform * features.size(0)
        ctx.save_for_backward(grad_features, grad_weight, grad_bias)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_features, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_features * grad_loss, grad_weight * grad_loss,
                None if grad_bias is None else grad_bias * grad_loss, None, None, None, None)


def linear_cross_entropy(features, weight, bias, labels, chunk_size=None, label_smoothing=0.0, matmul_dtype=None):
    """Summed cross-entropy of the logits `features W^T + b` over the rows whose label is not -100.

    Args:
        features: ... x D, the output layer's input.
        weight, bias: the output layer (V x D, V or None).
        labels: ..., target ids or -100.
        chunk_size: rows per chunk; by default `chunk_rows(matmul_dtype, device)`.
        label_smoothing: e in [0, 1), the weight of the uniform distribution in the target (see
            `LinearCrossEntropy`).
        matmul_dtype: the dtype of the three products (default: the weight's), e.g. torch.bfloat16 under autocast.
    """
    matmul_dtype = matmul_dtype or weight.dtype
    chunk_size = chunk_size or chunk_rows(matmul_dtype, features.device)
    # Row indices, not a boolean mask: the backward pass of index_select is ~6x faster than a mask's (2-core Xeon).
    rows = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    features = features.reshape(-1, features.size(-1)).index_select(0, rows)
    with without_autocast(features):  # the dtypes are chosen above; autocast would run the smoothing sums in bf16
        return LinearCrossEntropy.apply(features, weight, bias, labels.reshape(-1).index_select(0, rows), chunk_size,
                                        label_smoothing, matmul_dtype)


def chunk_rows(matmul_dtype, device):
    """The fused loss's rows per chunk, chosen by the cache the chunk's C x V logits are read back from.

    Float32 on a CPU whose cores have 2 MiB of level-2 cache (the 2-core Xeon with AMX): 128 rows, whose logits
    (4 MB at V = 8,000) stay in the two cores' L2 between the softmax and the two products that read them, the loss
    and gradients 4-11% faster than with 512 (D = 256 and 512). With less L2 (the 2-core AMD EPYC, 1 MiB per core,
    32 MiB of L3) the logits come from the L3 at any useful size, and larger products win: 512 rows 17-25% faster
    than 128 at D = 512, 10-14% at D = 256. Elsewhere (other devices, an unknown cache) 128. With bf16 products
    256 rows (17% faster than 128 and 512 on the Xeon).
    """
    if matmul_dtype != torch.float32:
        return 256
    l2_bytes = cpu_l2_cache_bytes() if device.type == "cpu" else None
    return 512 if l2_bytes is not None and l2_bytes < LARGE_L2_CACHE else 128


@cache
def cpu_l2_cache_bytes(cpu_folder="/sys/devices/system/cpu/cpu0"):
    """The level-2 cache of one core in bytes, read from Linux's sysfs; None where it does not say."""
    for index in sorted(Path(cpu_folder, "cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()  # "1024K"
        except OSError:
            continue
        if level == "2" and size[:-1].isdigit() and size[-1] in "KM":
            return int(size[:-1]) * (2**10 if size[-1] == "K" else 2**20)
    return None
