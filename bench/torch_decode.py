#!/usr/bin/env python3
"""The PyTorch side of the GPU benchmark (issue 7): the same Llama-3-8B shape
as bench/gpu_bench.cpp (4096 wide, 32 layers, 32 query and 8 key/value heads
of 128, 14336 feed-forward, 128256 tokens) in BF16 with random weights,
measured the same way in the same run by bench/gpu-check.sh:

  - time to first token for a 2,000-token prompt (prefill in chunks, then
    the first token),
  - batch-1 greedy decoding after that prompt, eager and captured as a CUDA
    graph (the best PyTorch can do without a serving framework),
  - aggregate decoding with 16, 64 and 128 sequences.

Each step picks the greedy token on the device and copies it to the host
(one small copy per step, which synchronises). The q/k/v and gate/up
matrices are fused, as serving engines do. Prints a table and `RESULT torch_*`
lines. PyTorch is installed on the GPU machines, not in the project.

usage: torch_decode.py [--layers L] [--prompt N] [--chunk N] [--steps N] [--batches 16,64,128]
"""
import argparse
import time

import torch
import torch.nn.functional as F

N_EMBD, N_HEAD, N_KV, HEAD_DIM, N_FF, N_VOCAB = 4096, 32, 8, 128, 14336, 128256
EPS = 1e-5


def rms_norm(x, w):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * w


def rope_tables(max_pos, device):
    inv = 1.0 / (500000.0 ** (torch.arange(0, HEAD_DIM, 2, device=device).float() / HEAD_DIM))
    ang = torch.arange(max_pos, device=device).float()[:, None] * inv[None, :]
    return torch.cos(ang), torch.sin(ang)  # (max_pos, HEAD_DIM / 2)


def rope(x, cos, sin):
    # x (B, H, T, D); cos/sin (B or 1, 1, T, D/2); NeoX pairs (i, i + D/2).
    a, b = x[..., : HEAD_DIM // 2].float(), x[..., HEAD_DIM // 2:].float()
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).to(x.dtype)


class Model:
    def __init__(self, layers, device):
        g = torch.Generator(device=device).manual_seed(1)

        def w(rows, cols):
            return (torch.rand(rows, cols, generator=g, device=device, dtype=torch.float32) * 2 - 1).mul_(
                (3.0 / cols) ** 0.5).to(torch.bfloat16)

        self.embd = w(N_VOCAB, N_EMBD)
        self.out = w(N_VOCAB, N_EMBD)
        self.out_norm = torch.ones(N_EMBD, device=device, dtype=torch.bfloat16)
        self.layers = []
        for _ in range(layers):
            self.layers.append(dict(
                attn_norm=torch.ones(N_EMBD, device=device, dtype=torch.bfloat16),
                wqkv=w((N_HEAD + 2 * N_KV) * HEAD_DIM, N_EMBD),
                wo=w(N_EMBD, N_HEAD * HEAD_DIM),
                ffn_norm=torch.ones(N_EMBD, device=device, dtype=torch.bfloat16),
                wgu=w(2 * N_FF, N_EMBD),
                wdown=w(N_EMBD, N_FF)))
        self.weight_bytes_per_token = sum(t.numel() * 2 for t in [self.out] + [
            l[k] for l in self.layers for k in ("wqkv", "wo", "wgu", "wdown")])

    def forward(self, tokens, pos, k_cache, v_cache, cos, sin, mask):
        """tokens (B, T) at positions pos (B, T); caches (layers, B, N_KV, ctx, D);
        mask (B, 1, T, ctx) additive. Returns the last position's logits (B, vocab)."""
        bsz, t = tokens.shape
        h = self.embd[tokens]
        c, s = cos[pos][:, None], sin[pos][:, None]
        for i, l in enumerate(self.layers):
            x = rms_norm(h, l["attn_norm"])
            qkv = x @ l["wqkv"].t()
            q, k, v = qkv.split([N_HEAD * HEAD_DIM, N_KV * HEAD_DIM, N_KV * HEAD_DIM], dim=-1)
            q = rope(q.view(bsz, t, N_HEAD, HEAD_DIM).transpose(1, 2), c, s)
            k = rope(k.view(bsz, t, N_KV, HEAD_DIM).transpose(1, 2), c, s)
            v = v.view(bsz, t, N_KV, HEAD_DIM).transpose(1, 2)
            # Write the new keys and values at their positions (same for every sequence of a step).
            k_cache[i].index_copy_(2, pos[0], k)
            v_cache[i].index_copy_(2, pos[0], v)
            # Grouped-query attention without copying the cache: the 4 query
            # heads of each key/value head attend together.
            qg = q.reshape(bsz, N_KV, (N_HEAD // N_KV) * t, HEAD_DIM)
            scores = (qg @ k_cache[i].transpose(-1, -2)).float() / HEAD_DIM ** 0.5
            scores = scores.view(bsz, N_KV, N_HEAD // N_KV, t, -1) + mask[:, :, None]
            p = torch.softmax(scores, dim=-1).to(torch.bfloat16).view(bsz, N_KV, (N_HEAD // N_KV) * t, -1)
            att = (p @ v_cache[i]).view(bsz, N_HEAD, t, HEAD_DIM).transpose(1, 2).reshape(bsz, t, -1)
            h = h + att @ l["wo"].t()
            x = rms_norm(h, l["ffn_norm"])
            gate, up = (x @ l["wgu"].t()).split([N_FF, N_FF], dim=-1)
            h = h + (F.silu(gate) * up) @ l["wdown"].t()
        return rms_norm(h[:, -1], self.out_norm) @ self.out.t()


def causal_mask(bsz, positions, ctx, device):
    # (B, 1, T, ctx): 0 where key position <= query position, else -inf.
    keys = torch.arange(ctx, device=device)
    m = torch.where(keys[None, :] <= positions[:, None], 0.0, float("-inf"))
    return m[None, None].expand(bsz, 1, -1, -1).contiguous()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batches", default="16,64,128")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    model = Model(a.layers, dev)
    ctx = a.prompt + a.steps + 1
    cos, sin = rope_tables(ctx + 64, dev)

    def caches(bsz, length):
        shape = (a.layers, bsz, N_KV, length, HEAD_DIM)
        return (torch.zeros(shape, device=dev, dtype=torch.bfloat16),
                torch.zeros(shape, device=dev, dtype=torch.bfloat16))

    results = {}
    with torch.inference_mode():
        # Time to first token: chunked prefill of one sequence.
        kc, vc = caches(1, ctx)
        prompt = (torch.arange(a.prompt, device=dev) * 7919 + 13) % N_VOCAB
        for warm in (True, False):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for start in range(0, a.prompt, a.chunk):
                end = min(a.prompt, start + a.chunk)
                pos = torch.arange(start, end, device=dev)[None]
                logits = model.forward(prompt[None, start:end], pos, kc, vc, cos, sin,
                                       causal_mask(1, pos[0], ctx, dev))
            tok = int(torch.argmax(logits[0]).item())
            ttft = time.perf_counter() - t0
        results["ttft_s"] = ttft

        # Batch 1, eager.
        def decode(n, first_tok, first_pos):
            t = first_tok
            for step in range(n):
                p = first_pos + step
                pos = torch.tensor([[p]], device=dev)
                logits = model.forward(torch.tensor([[t]], device=dev), pos, kc, vc, cos, sin,
                                       causal_mask(1, pos[0], ctx, dev))
                t = int(torch.argmax(logits[0]).item())
            return t

        decode(2, tok, a.prompt)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        decode(a.steps, tok, a.prompt)
        results["tg1_eager"] = a.steps / (time.perf_counter() - t0)

        # Batch 1 as a CUDA graph: static token, position and mask tensors
        # updated in place between replays.
        s_tok = torch.tensor([[tok]], device=dev)
        s_pos = torch.tensor([[a.prompt]], device=dev)
        s_mask = causal_mask(1, s_pos[0], ctx, dev)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                model.forward(s_tok, s_pos, kc, vc, cos, sin, s_mask)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            s_logits = model.forward(s_tok, s_pos, kc, vc, cos, sin, s_mask)
            s_next = torch.argmax(s_logits[0])
        keys = torch.arange(ctx, device=dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for step in range(a.steps):
            p = a.prompt + step
            s_pos.fill_(p)
            s_mask.copy_(torch.where(keys <= p, 0.0, float("-inf"))[None, None, None])
            graph.replay()
            s_tok.fill_(int(s_next.item()))
        results["tg1_graph"] = a.steps / (time.perf_counter() - t0)
        del graph, kc, vc

        # Aggregate decoding: 16-token prompts, then one token per sequence per step.
        for bsz in [int(b) for b in a.batches.split(",")]:
            length = 16 + a.steps + 4
            kc, vc = caches(bsz, length)
            toks = (torch.arange(bsz * 16, device=dev).view(bsz, 16) * 31) % N_VOCAB
            pos = torch.arange(16, device=dev)[None].expand(bsz, -1)
            logits = model.forward(toks, pos, kc, vc, cos, sin, causal_mask(bsz, pos[0], length, dev))
            nxt = torch.argmax(logits, dim=-1)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for step in range(a.steps):
                p = torch.full((bsz, 1), 16 + step, device=dev)
                logits = model.forward(nxt[:, None], p, kc, vc, cos, sin, causal_mask(bsz, p[0], length, dev))
                nxt = torch.argmax(logits, dim=-1)
                nxt.cpu()
            results[f"tg{bsz}"] = bsz * a.steps / (time.perf_counter() - t0)
            del kc, vc

    print(f"| PyTorch {torch.__version__}, BF16, {a.layers} layers | "
          f"{model.weight_bytes_per_token / 1e9:.2f} GB read per token |")
    print(f"| TTFT, {a.prompt}-token prompt in chunks of {a.chunk} | {results['ttft_s']:.3f} s |")
    print(f"| decode, batch 1 | eager {results['tg1_eager']:.1f} tok/s, CUDA graph {results['tg1_graph']:.1f} tok/s |")
    for k, v in results.items():
        if k.startswith("tg") and k[2:].isdigit():
            print(f"| decode, {k[2:]} sequences | {v:.0f} tok/s aggregate |")
    for k, v in results.items():
        print(f"RESULT torch_{k} {v:.4f}")
    print(f"RESULT torch_weight_gb_per_token {model.weight_bytes_per_token / 1e9:.3f}")


if __name__ == "__main__":
    main()
