#!/usr/bin/python3
"""PyTorch 1.13 peer of recipes/bench_asr.lua (issue 6, "Performance"): one training step of the
ASR recipe's SRU-transducer (recipes/asr/model.lua) written as a PyTorch user would, on the
batches and initial weights that bench_asr.lua writes.

    /usr/bin/python3 recipes/bench/asr_step_torch.py --input=batches.safetensors --threads=1
        [--repeat=12] [--warmup=4] [--variants=pruned,full]

The input file (written by bench_asr.lua) holds the batches (feats.k (B, T, F) f32, feat_lens.k,
tokens.k (B, S) i64 padded with 0, token_lens.k), tern's initial weights (model.<name>, the
names of this module's state_dict) and, in its metadata, the model sizes, loss and optimizer
settings and tern's eval-mode losses of batch 1.

Model (identical sizes, names and parameter count; the weights are tern's, loaded strictly):
  front        x4 frame stacking, Linear(4F, d_model), LayerNorm, ReLU
  encoder      sru.SRU(d_model, hidden, num_layers, bidirectional, dropout, layer_norm=True)
               (the `sru` package 2.6; on the CPU with grad enabled it runs its Python loop over
               time, elementwise_recurrence_naive, as any user of the package gets) or nn.LSTM
               (pack_padded_sequence) for encoder=lstm; padded frames masked (mask_pad)
  embedding    nn.Embedding(vocab, dec_dim) over [blank] + tokens, nn.LSTM(dec_dim, dec_dim)
  joiner       encoder_proj, decoder_proj, output_linear(tanh(enc + dec)), simple_am_proj,
               simple_lm_proj (icefall's names)
Loss variants:
  pruned       the recipe's loss with plain PyTorch ops (spec/fixtures/rnnt_reference.py, the
               pure-PyTorch port of fast_rnnt): simple_scale * rnnt_loss_smoothed(lm, am, ...,
               lm_only_scale, am_only_scale, return_grad=True) + pruned_scale *
               rnnt_loss_pruned(joiner(do_rnnt_pruning(...)), ...), ranges from
               get_rnnt_prune_ranges(s_range), reduction sum
  full         the joiner over the whole (B, T', S+1) grid and torchaudio.functional.rnnt_loss
               (blank 0, reduction sum); the simple projections are unused (no gradient)
Step: loss, loss.item(), optimizer.zero_grad(), (loss / B).backward(), clip_grad_norm_(clip),
Adam(lr, betas, eps, weight_decay).step() (torch 1.13 defaults otherwise: the single-tensor
loop on the CPU). Each variant starts from tern's weights with a fresh Adam; `warmup` untimed
steps, then `repeat` timed ones cycling over the batches.

One JSON line per variant:
  {"op":"asr_step","impl":"torch","loss":"pruned"|"full","threads":N,"median_ms":..,"min_ms":..,
   "cpu_ms":..,"fwd_ms":..,"bwd_ms":..,"opt_ms":..,"enc_ms":..,"repeats":..,"warmup":..,
   "params":..,"B":..,"batches":..,"encoder":..,"dtype":"f32","device":"cpu","load1":..,"note":..}
and one check line (eval mode, batch 1, tern's weights):
  {"check":"same_model","impl":"torch","params":..,"tern_params":..,"simple":..,"tern_simple":..,
   "pruned":..,"tern_pruned":..,"full":..,"tern_full":..,"max_rel_diff":..}
If torch, torchaudio, sru or safetensors cannot be imported, one JSON note says so (exit 0).
Threads: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS are set from --threads before
torch is imported, and torch.set_num_threads(threads).
"""
import json
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import peer  # noqa: E402  recipes/lib/peer.py

OPTS = peer.parse_args(sys.argv[1:], {
    "input": "", "threads": "1", "repeat": "12", "warmup": "4", "variants": "pruned,full",
}, __doc__)
THREADS = int(OPTS["threads"])
REPEAT = max(1, int(OPTS["repeat"]))
WARMUP = max(0, int(OPTS["warmup"]))
VARIANTS = [v for v in OPTS["variants"].split(",") if v]
if not OPTS["input"]:
    sys.exit("asr_step_torch.py: --input=<file written by recipes/bench_asr.lua> is required")

peer.pin_threads(THREADS)

try:
    import torch
    import torch.nn as nn
    from torchaudio.functional import rnnt_loss as ta_rnnt_loss
    from safetensors import safe_open
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package's note that its CUDA kernels did not build
        import sru
except Exception as e:  # noqa: BLE001 - any import failure means "no peer"
    peer.no_peer("torch", THREADS, "torch/torchaudio/sru/safetensors", e)

# the package warns on every CPU training call ("Running SRU on CPU with grad_enabled=True")
warnings.filterwarnings("ignore", message="Running SRU on CPU")

sys.path.insert(0, os.path.join(HERE, "..", "..", "spec", "fixtures"))
import rnnt_reference as R  # noqa: E402

torch.set_num_threads(THREADS)
now = time.perf_counter


def cpu_now():
    return time.process_time()


# ------------------------------------------------------------------------------------- model

class Joiner(nn.Module):
    def __init__(self, enc_dim, dec_dim, joiner_dim, vocab):
        super().__init__()
        self.encoder_proj = nn.Linear(enc_dim, joiner_dim)
        self.decoder_proj = nn.Linear(dec_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab)
        self.simple_am_proj = nn.Linear(enc_dim, vocab)
        self.simple_lm_proj = nn.Linear(dec_dim, vocab)

    def forward(self, enc, dec):
        """enc, dec already projected and broadcastable: output_linear(tanh(enc + dec))."""
        return self.output_linear(torch.tanh(enc + dec))


class Transducer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.stack = c["stack"]
        self.encoder_type = c["encoder"]
        self.front = nn.Linear(c["feat_dim"] * c["stack"], c["d_model"])
        self.front_norm = nn.LayerNorm(c["d_model"])
        if self.encoder_type == "sru":
            self.encoder = sru.SRU(c["d_model"], c["enc_hidden"], num_layers=c["enc_layers"],
                                   bidirectional=c["bidirectional"], dropout=c["dropout"],
                                   layer_norm=True)
        else:
            self.encoder = nn.LSTM(c["d_model"], c["enc_hidden"], num_layers=c["enc_layers"],
                                   bidirectional=c["bidirectional"], dropout=c["dropout"])
        enc_out = c["enc_hidden"] * (2 if c["bidirectional"] else 1)
        self.embedding = nn.Embedding(c["vocab"], c["dec_dim"])
        self.decoder = nn.LSTM(c["dec_dim"], c["dec_dim"])
        self.joiner = Joiner(enc_out, c["dec_dim"], c["joiner_dim"], c["vocab"])

    def encode(self, feats, feat_lens):
        """feats (B, T, F), feat_lens (B) -> enc (B, T', enc_out), enc_lens (B)"""
        B, T, F = feats.shape
        T4 = T // self.stack
        x = feats[:, :T4 * self.stack].reshape(B, T4, F * self.stack)
        x = torch.relu(self.front_norm(self.front(x)))
        lens = torch.clamp(feat_lens // self.stack, 1, T4)
        x = x.transpose(0, 1)                                      # (T', B, d)
        if self.encoder_type == "sru":
            mask_pad = torch.arange(T4).unsqueeze(1) >= lens.unsqueeze(0)   # (T', B), True = pad
            h, _ = self.encoder(x, mask_pad=mask_pad if bool(mask_pad.any()) else None)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lens, enforce_sorted=False)
            h, _ = self.encoder(packed)
            h, _ = nn.utils.rnn.pad_packed_sequence(h, total_length=T4)
        return h.transpose(0, 1), lens

    def decode_targets(self, tokens):
        """tokens (B, S) padded with blank -> dec (B, S+1, dec_dim)"""
        ids = torch.cat((torch.zeros(tokens.shape[0], 1, dtype=torch.int64), tokens), 1)
        out, _ = self.decoder(self.embedding(ids).transpose(0, 1))
        return out.transpose(0, 1)


# -------------------------------------------------------------------------------------- losses

def loss_pruned(model, b, c, parts=None):
    t0 = now()
    enc, enc_lens = model.encode(b["feats"], b["feat_lens"])
    t1 = now()
    dec = model.decode_targets(b["tokens"])
    B = enc.shape[0]
    zeros = torch.zeros(B, dtype=torch.int64)
    boundary = torch.stack((zeros, zeros, b["token_lens"], enc_lens), 1)
    am = model.joiner.simple_am_proj(enc)
    lm = model.joiner.simple_lm_proj(dec)
    simple, (px_grad, py_grad) = R.rnnt_loss_smoothed(
        lm, am, b["tokens"], 0, lm_only_scale=c["lm_only_scale"],
        am_only_scale=c["am_only_scale"], boundary=boundary, reduction="sum", return_grad=True)
    ranges = R.get_rnnt_prune_ranges(px_grad, py_grad, boundary, c["s_range"])
    e = model.joiner.encoder_proj(enc)
    d = model.joiner.decoder_proj(dec)
    e_p, d_p = R.do_rnnt_pruning(e, d, ranges)
    logits = model.joiner(e_p, d_p)                                # (B, T', s_range, V)
    pruned = R.rnnt_loss_pruned(logits, b["tokens"], ranges, 0, boundary=boundary,
                                reduction="sum")
    if parts is not None:
        parts["enc"] = t1 - t0
        parts["simple"], parts["pruned"] = simple.item(), pruned.item()
    return c["simple_scale"] * simple + c["pruned_scale"] * pruned


def loss_full(model, b, c, parts=None):
    t0 = now()
    enc, enc_lens = model.encode(b["feats"], b["feat_lens"])
    t1 = now()
    dec = model.decode_targets(b["tokens"])
    e = model.joiner.encoder_proj(enc)
    d = model.joiner.decoder_proj(dec)
    logits = model.joiner(e.unsqueeze(2), d.unsqueeze(1))          # (B, T', S+1, V)
    loss = ta_rnnt_loss(logits, b["tokens"].int(), enc_lens.int(), b["token_lens"].int(),
                        blank=0, reduction="sum")
    if parts is not None:
        parts["enc"] = t1 - t0
    return loss


LOSSES = {"pruned": loss_pruned, "full": loss_full}


# ---------------------------------------------------------------------------------------- input

def read_input(path):
    tensors, meta = {}, None
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    ints = ("batches", "batch", "feat_dim", "stack", "d_model", "enc_layers", "enc_hidden",
            "dec_dim", "joiner_dim", "vocab", "s_range", "tern_params")
    floats = ("dropout", "simple_scale", "pruned_scale", "lm_only_scale", "am_only_scale", "lr",
              "beta1", "beta2", "eps", "weight_decay", "clip", "check_simple", "check_pruned",
              "check_full")
    c = {"encoder": meta["encoder"], "data": meta.get("data", "?"),
         "bidirectional": meta["bidirectional"] == "true"}
    for k in ints:
        c[k] = int(meta[k])
    for k in floats:
        c[k] = float(meta[k])
    batches = []
    for k in range(1, c["batches"] + 1):
        batches.append({"feats": tensors["feats.%d" % k], "feat_lens": tensors["feat_lens.%d" % k],
                        "tokens": tensors["tokens.%d" % k],
                        "token_lens": tensors["token_lens.%d" % k]})
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return c, batches, weights


def fresh_model(c, weights):
    m = Transducer(c)
    m.load_state_dict(weights, strict=True)
    m.train()
    return m


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------- main

def emit(d):
    print(json.dumps(d, separators=(",", ":")), flush=True)


def check(c, batches, weights):
    m = Transducer(c)
    own = n_params(m)
    m.load_state_dict(weights, strict=True)
    m.eval()
    parts = {}
    with torch.no_grad():
        loss_pruned(m, batches[0], c, parts)
        full = loss_full(m, batches[0], c).item()
    got = {"simple": parts["simple"], "pruned": parts["pruned"], "full": full}
    rel = max(abs(got[k] - c["check_" + k]) / max(1e-12, abs(c["check_" + k])) for k in got)
    emit({"check": "same_model", "impl": "torch", "threads": THREADS, "params": own,
          "tern_params": c["tern_params"], "params_equal": own == c["tern_params"],
          "simple": round(got["simple"], 4), "tern_simple": c["check_simple"],
          "pruned": round(got["pruned"], 4), "tern_pruned": c["check_pruned"],
          "full": round(full, 4), "tern_full": c["check_full"], "max_rel_diff": rel,
          "note": "eval mode (no dropout), batch 1, tern's initial weights; "
                  "full = torchaudio rnnt_loss vs tern's tn.rnnt.loss on the full lattice"})


def run(variant, c, batches, weights):
    model = fresh_model(c, weights)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"],
                           weight_decay=c["weight_decay"])
    loss_fn = LOSSES[variant]
    B = c["batch"]
    k = [0]

    def step(rec):
        b = batches[k[0] % len(batches)]
        k[0] += 1
        t0 = now()
        parts = {}
        loss = loss_fn(model, b, c, parts)
        lval = loss.item() / B
        if lval != lval:
            raise RuntimeError("the torch loss is NaN")
        t1 = now()
        opt.zero_grad()
        (loss / B).backward()
        t2 = now()
        nn.utils.clip_grad_norm_(params, c["clip"])
        opt.step()
        t3 = now()
        if rec is not None:
            rec.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2, parts["enc"]))

    for _ in range(WARMUP):
        step(None)
    rec, cpus = [], []
    for _ in range(REPEAT):
        c0 = cpu_now()
        step(rec)
        cpus.append(cpu_now() - c0)

    def med(i):
        return round(statistics.median(r[i] for r in rec) * 1e3, 3)

    note = ("sru package: Python loop over time on the CPU with grad (elementwise_recurrence_naive)"
            if c["encoder"] == "sru" else "nn.LSTM with pack_padded_sequence")
    if variant == "pruned":
        note += "; pruned loss: spec/fixtures/rnnt_reference.py (pure-PyTorch port of fast_rnnt)"
    else:
        note += "; full loss: joiner on the (B, T', S+1) grid + torchaudio.functional.rnnt_loss"
    emit({"op": "asr_step", "impl": "torch", "loss": variant, "threads": torch.get_num_threads(),
          "median_ms": med(0), "min_ms": round(min(r[0] for r in rec) * 1e3, 3),
          "cpu_ms": round(statistics.median(cpus) * 1e3, 3), "fwd_ms": med(1), "bwd_ms": med(2),
          "opt_ms": med(3), "enc_fwd_ms": med(4), "repeats": len(rec), "warmup": WARMUP,
          "params": n_params(model), "B": B, "batches": len(batches), "encoder": c["encoder"],
          "data": c["data"], "dtype": "f32", "device": "cpu",
          "load1": round(os.getloadavg()[0], 2), "note": note})


def main():
    c, batches, weights = read_input(OPTS["input"])
    torch.manual_seed(0)
    check(c, batches, weights)
    for v in VARIANTS:
        if v not in LOSSES:
            sys.exit("asr_step_torch.py: unknown variant %s (pruned, full)" % v)
        run(v, c, batches, weights)


if __name__ == "__main__":
    main()
