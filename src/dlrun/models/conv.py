"""Convolutions and pooling, with the kernels dlrun uses for speed on XLA:CPU."""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp



def conv_xla(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """'Same-padded by pad' 2-D convolution (cross-correlation), NHWC x HWIO -> NHWC."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_matmul(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """The same convolution as one matmul: the kh*kw shifted slices of the (padded) input are
    concatenated along channels, (B*OH*OW, kh*kw*Cin) @ (kh*kw*Cin, Cout).

    Measured on the 2-core CPU this project targets (seed convnet, batch 128, one jitted
    training step): 80-87 ms with this form against 135-139 ms with XLA's convolution, whose
    gradient kernels are slow on CPU; XLA's forward pass alone is faster (16 vs 36-43 ms), so
    ConvNet uses this form for training and `conv_xla` for evaluation.
    """
    kh, kw, cin, cout = kernel.shape
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = jnp.concatenate([x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)],
                           axis=-1)  # (B, OH, OW, kh*kw*Cin), channel index = (i*kw + j)*Cin + c
    out = cols.reshape(b * oh * ow, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
    return out.reshape(b, oh, ow, cout)


def conv_shift(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """The same convolution as kh*kw*Cin broadcast multiply-adds of shifted input slices: one
    elementwise loop that XLA fuses with the activation and pooling after it, so a first layer
    with few input channels never writes its large pre-pooling output to memory (seed convnet,
    layer 1 with relu and pool, batch 128: 0.7 ms forward against 4.1 ms as conv_matmul)."""
    kh, kw, cin, _ = kernel.shape
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return sum(x[:, i:i + oh, j:j + ow, c:c + 1] * kernel[i, j, c]
               for i in range(kh) for j in range(kw) for c in range(cin))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_shift_matmul(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """conv_shift's forward pass with conv_matmul's gradient: XLA differentiates the broadcast
    sum into kh*kw*Cin separate reductions, 3x slower than the matmul's gradient. Used for
    layers with at most SHIFT_MAX_TAPS taps; the seed convnet's training step (first layer
    1 -> 32 channels): 58-62 ms against 62-67 ms with conv_matmul (3 interleaved runs each)."""
    return conv_shift(x, kernel, pad)


def _conv_shift_fwd(x, kernel, pad):
    return conv_shift(x, kernel, pad), (x, kernel)


def _conv_shift_bwd(pad, residuals, g):
    x, kernel = residuals
    return jax.vjp(lambda x, k: conv_matmul(x, k, pad), x, kernel)[1](g)


conv_shift_matmul.defvjp(_conv_shift_fwd, _conv_shift_bwd)


SHIFT_MAX_TAPS = 9  # kh*kw*Cin: a 3x3 kernel on one channel (grey images' first layer)


class Conv(nn.Module):
    """3-D kernel (kh, kw, Cin, Cout) 'kernel' + optional 'bias', as flax.linen.Conv stores them."""

    features: int
    kernel_size: int
    pad: int
    use_bias: bool
    kernel_init: Callable

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        if k * k * x.shape[-1] <= SHIFT_MAX_TAPS:
            y = conv_shift_matmul(x, kernel, self.pad)
        else:
            y = (conv_matmul if train else conv_xla)(x, kernel, self.pad)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return y


def max_pool_ceil(x: jax.Array, window: int) -> jax.Array:
    """Non-overlapping max-pool over H and W of (B, H, W, C); a partial border window is kept
    (Theano's `ignore_border=False`, i.e. ceil mode). Written as pad + reshape + max, which XLA
    differentiates faster than reduce_window."""
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    x = x.reshape(b, (h + ph) // window, window, (w + pw) // window, window, c)
    return x.max(axis=(2, 4))
