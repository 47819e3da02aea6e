#!/usr/bin/env python3
"""Load generator for any OpenAI-compatible server: streams completions (or chat
completions) through the official `openai` SDK, or a small HTTP/1.1 client of
the standard library where that SDK is not installed (the GPU machine), at
each concurrency level in turn and reports throughput and latency percentiles
(TTFT, inter-token, end to end) as a table, and optionally as JSON. Prompts
are words, or random token ids (--token-ids: for servers of models without a
tokenizer). Exit status 1 if any request failed.

Example (a server from scripts/serve on 127.0.0.1:8080):
  .venv/bin/python tools/loadgen.py --concurrency 1,4,16,64 --requests 64 \\
      --prompt-tokens 32 --max-tokens 64 --ignore-eos --json load.json
"""
import argparse
import asyncio
import json
import math
import random
import sys
import time
import urllib.parse

try:
    import openai
except ImportError:  # --client http still works
    openai = None

# Short, common English words: most BPE vocabularies hold each one, with its
# leading space, as a single token, so N words make a prompt of about N tokens.
WORDS = """
the of and to in is was he for it with as his on be at by had are but from or
have an they which one you were her all she there would their we him been has
when who will more no if out so said what up its about into than them can only
other new some could time these two may then do first any my now such like our
over man me even most made after also did many before must through back years
where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between
both life being under never day same another know while last might us great old
year off come since against go came right used take three house table water
river stone light horse door green small city word night hand place sound
""".split()


def parse_levels(s):
    try:
        levels = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {s!r}")
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {s!r}")
    return levels


def parse_range(s):
    """'N' or 'LO:HI' (inclusive) -> (lo, hi)."""
    try:
        lo, _, hi = s.partition(":")
        lo, hi = int(lo), int(hi) if hi else int(lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO:HI, got {s!r}")
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {s!r}")
    return lo, hi


def percentile(xs, q):
    """The q-th percentile (0..100) of xs with linear interpolation (NumPy's
    default), or None for no samples."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    f = math.floor(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def make_prompt(rng, words, n, vocab=None):
    """n words, or with vocab n token ids drawn uniformly from [0, vocab)."""
    if vocab:
        return [rng.randrange(vocab) for _ in range(n)]
    return " ".join(rng.choice(words) for _ in range(n))


class HTTPStatusError(Exception):
    """A reply other than 200: its status and body (the server's error object)."""


class HTTPClient:
    """The standard library's stand-in for the SDK calls loadgen makes: POST a
    streamed request and yield each SSE event's JSON, GET the model list.
    HTTP/1.1, one connection per request (Connection: close), chunked or
    sized bodies; http:// or https://. Every read is bounded by `timeout`."""

    def __init__(self, base_url, api_key, timeout):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"expected an http(s):// base URL, got {base_url!r}")
        self.host, self.tls = u.hostname, u.scheme == "https"
        self.port = u.port or (443 if self.tls else 80)
        self.prefix = u.path.rstrip("/")
        self.api_key, self.timeout = api_key, timeout

    async def _read(self, aw):
        return await asyncio.wait_for(aw, self.timeout)

    async def _request(self, method, path, body=None):
        """Sends the request; returns (reader, writer, status, headers)."""
        reader, writer = await self._read(asyncio.open_connection(self.host, self.port, ssl=self.tls or None))
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.api_key}\r\nAccept: text/event-stream, application/json\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode() + data)
        await writer.drain()
        status = int((await self._read(reader.readline())).split()[1])
        headers = {}
        while (line := await self._read(reader.readline())) not in (b"\r\n", b"\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        return reader, writer, status, headers

    async def _body(self, reader, headers):
        """Yields the body's bytes as they come."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while size := int((await self._read(reader.readline())).split(b";")[0], 16):
                yield await self._read(reader.readexactly(size))
                await self._read(reader.readexactly(2))
        elif "content-length" in headers:
            yield await self._read(reader.readexactly(int(headers["content-length"])))
        else:
            while data := await self._read(reader.read(65536)):
                yield data

    async def _whole(self, reader, headers):
        return b"".join([d async for d in self._body(reader, headers)])

    async def stream(self, path, body):
        """POSTs body and yields the JSON of each SSE data event up to [DONE]."""
        reader, writer, status, headers = await self._request("POST", path, body)
        try:
            if status != 200:
                raise HTTPStatusError(f"HTTP {status}: {(await self._whole(reader, headers)).decode(errors='replace')}")
            buf = b""
            async for data in self._body(reader, headers):
                buf += data.replace(b"\r\n", b"\n")
                *events, buf = buf.split(b"\n\n")
                for ev in events:
                    payload = b"\n".join(l[5:].lstrip(b" ") for l in ev.split(b"\n") if l.startswith(b"data:"))
                    if not payload:
                        continue  # a comment (keep-alive)
                    if payload == b"[DONE]":
                        return
                    yield json.loads(payload)
        finally:
            writer.close()

    async def model_ids(self):
        reader, writer, status, headers = await self._request("GET", "/models")
        try:
            body = await self._whole(reader, headers)
            if status != 200:
                raise HTTPStatusError(f"HTTP {status}: {body.decode(errors='replace')}")
            return [m["id"] for m in json.loads(body)["data"]]
        finally:
            writer.close()

    async def close(self):
        pass


class SDKClient:
    """The official SDK behind the same calls (chunks as plain dicts)."""

    def __init__(self, base_url, api_key, timeout):
        self.c = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)

    async def stream(self, path, body):
        body = dict(body)
        extra = {k: body.pop(k) for k in ("ignore_eos",) if k in body}
        if extra:
            body["extra_body"] = extra
        create = self.c.chat.completions.create if path == "/chat/completions" else self.c.completions.create
        async for chunk in await create(**body):
            yield chunk.model_dump()

    async def model_ids(self):
        return [m.id for m in (await self.c.models.list()).data]

    async def close(self):
        await self.c.close()


class Result:
    """One request: timestamps (time.perf_counter seconds) and token counts."""
    __slots__ = ("ok", "error", "t_start", "t_first", "t_end", "chunk_times", "n_chunks", "usage_out",
                 "usage_prompt", "finish")

    def __init__(self):
        self.ok, self.error = False, None
        self.t_start = self.t_first = self.t_end = None
        self.chunk_times = []  # arrival of each chunk that carried text
        self.n_chunks = 0
        self.usage_out = self.usage_prompt = None
        self.finish = None


async def one_request(client, args, prompt, max_tokens):
    res = Result()
    body = dict(model=args.model, max_tokens=max_tokens, stream=True, temperature=args.temperature)
    if args.include_usage:
        body["stream_options"] = {"include_usage": True}
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.chat:
        path, body["messages"] = "/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/completions", prompt
    res.t_start = time.perf_counter()
    try:
        async for chunk in client.stream(path, body):
            now = time.perf_counter()
            if chunk.get("usage"):
                res.usage_out, res.usage_prompt = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
            for ch in chunk.get("choices") or []:
                text = ((ch.get("delta") or {}).get("content") if args.chat else ch.get("text")) or ""
                # token-id prompts: the model may have no tokenizer, so its
                # chunks carry no text; each one stands for the tokens it came for
                if text or args.token_ids:
                    res.chunk_times.append(now)
                    res.n_chunks += 1
                    if res.t_first is None:
                        res.t_first = now
                if ch.get("finish_reason"):
                    res.finish = ch["finish_reason"]
        res.t_end = time.perf_counter()
        if res.finish is None:
            res.error = "stream ended without a finish_reason"
        else:
            res.ok = True
    except Exception as ex:  # any failure counts; the first few messages are reported
        res.t_end = time.perf_counter()
        res.error = f"{type(ex).__name__}: {ex}"[:300]
    return res


async def run_level(client, args, conc, words):
    """Runs one concurrency level; returns its list of Results."""
    rng = random.Random(f"{args.seed}:{conc}")  # each level reproducible on its own
    results = []
    deadline = None if args.duration is None else time.perf_counter() + args.duration
    issued = 0

    def next_spec():
        nonlocal issued
        if deadline is None and issued >= args.requests:
            return None
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        issued += 1
        return make_prompt(rng, words, rng.randint(*args.prompt_tokens), args.token_ids), rng.randint(*args.max_tokens)

    async def worker():
        while (spec := next_spec()) is not None:
            results.append(await one_request(client, args, *spec))

    await asyncio.gather(*(worker() for _ in range(conc)))
    return results


def summarize(conc, results):
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    with_usage = all(r.usage_out is not None for r in ok) and ok
    out_tokens = sum(r.usage_out if with_usage else r.n_chunks for r in ok)
    t0 = min((r.t_start for r in results), default=0.0)
    t1 = max((r.t_end for r in results), default=0.0)
    wall = t1 - t0
    ttft = [r.t_first - r.t_start for r in ok if r.t_first is not None]
    itl = [b - a for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    e2e = [r.t_end - r.t_start for r in ok]
    prompt_tokens = [r.usage_prompt for r in ok if r.usage_prompt is not None]
    errors = {}
    for r in failed:
        errors[r.error] = errors.get(r.error, 0) + 1

    def pct(xs, qs=(50, 90, 99)):
        return {f"p{q}": percentile(xs, q) for q in qs} | {"mean": sum(xs) / len(xs) if xs else None}

    return {
        "concurrency": conc,
        "requests": len(results),
        "ok": len(ok),
        "failed": len(failed),
        "errors": [{"error": e, "count": n} for e, n in sorted(errors.items(), key=lambda kv: -kv[1])[:5]],
        "output_tokens": out_tokens,
        "tokens_source": "usage" if with_usage else "chunks",
        "content_chunks": sum(r.n_chunks for r in ok),
        "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens) if prompt_tokens else None,
        "wall_s": wall,
        "output_tok_per_s": out_tokens / wall if wall > 0 else None,
        "req_per_s": len(ok) / wall if wall > 0 else None,
        "ttft_s": pct(ttft),
        "itl_s": pct(itl),
        "e2e_s": pct(e2e),
    }


COLUMNS = [  # header, width, value of a level summary
    ("conc", 5, lambda s: f"{s['concurrency']}"),
    ("ok", 5, lambda s: f"{s['ok']}"),
    ("fail", 4, lambda s: f"{s['failed']}"),
    ("out_tok", 8, lambda s: f"{s['output_tokens']}"),
    ("wall_s", 7, lambda s: f"{s['wall_s']:.2f}"),
    ("tok/s", 8, lambda s: _num(s["output_tok_per_s"], 1, 1)),
    ("req/s", 6, lambda s: _num(s["req_per_s"], 1, 2)),
    ("ttft50", 7, lambda s: _num(s["ttft_s"]["p50"], 1e3, 1)),
    ("ttft90", 7, lambda s: _num(s["ttft_s"]["p90"], 1e3, 1)),
    ("ttft99", 7, lambda s: _num(s["ttft_s"]["p99"], 1e3, 1)),
    ("itl50", 6, lambda s: _num(s["itl_s"]["p50"], 1e3, 1)),
    ("itl90", 6, lambda s: _num(s["itl_s"]["p90"], 1e3, 1)),
    ("itl99", 6, lambda s: _num(s["itl_s"]["p99"], 1e3, 1)),
    ("e2e50", 6, lambda s: _num(s["e2e_s"]["p50"], 1, 2)),
    ("e2e99", 6, lambda s: _num(s["e2e_s"]["p99"], 1, 2)),
]


def _num(x, scale, digits):
    return "-" if x is None else f"{x * scale:.{digits}f}"


def table_header():
    return " ".join(h.rjust(w) for h, w, _ in COLUMNS) + "\n" + \
        "(ttft and itl in ms, e2e in s; tok/s counts output tokens over the level's wall time)"


def table_row(s):
    return " ".join(f(s).rjust(w) for _, w, f in COLUMNS)


async def main_async(args):
    words = WORDS
    if args.words_file:
        with open(args.words_file, encoding="utf-8") as f:
            words = f.read().split()
        if not words:
            sys.exit(f"loadgen: {args.words_file} has no words")
    if args.client == "auto":
        args.client = "openai" if openai else "http"
    client = (SDKClient if args.client == "openai" else HTTPClient)(args.base_url, args.api_key, args.timeout)
    if args.model is None:
        ids = await client.model_ids()
        if not ids:
            sys.exit("loadgen: the server lists no models; pass --model")
        args.model = ids[0]

    if args.warmup:
        warm = await asyncio.gather(*(one_request(client, args, make_prompt(random.Random(i), words, 8, args.token_ids),
                                                  4) for i in range(args.warmup)))
        bad = [r.error for r in warm if not r.ok]
        if bad:
            print(f"loadgen: warm-up failed: {bad[0]}", file=sys.stderr)

    print(f"model {args.model} at {args.base_url} ({args.client} client), {'chat' if args.chat else 'completions'}, "
          f"{'token-id ' if args.token_ids else ''}prompt tokens "
          f"{_rng_str(args.prompt_tokens)}, max tokens {_rng_str(args.max_tokens)}, "
          f"ignore_eos {args.ignore_eos}, " +
          (f"{args.duration:g} s per level" if args.duration is not None else f"{args.requests} requests per level"))
    print(table_header(), flush=True)
    levels = []
    for conc in args.concurrency:
        s = summarize(conc, await run_level(client, args, conc, words))
        levels.append(s)
        print(table_row(s), flush=True)
        for e in s["errors"]:
            print(f"  {e['count']} x {e['error']}", file=sys.stderr)
    await client.close()

    if args.json:
        cfg = {k: v for k, v in vars(args).items() if k not in ("api_key", "json")}
        with open(args.json, "w") as f:
            json.dump({"config": cfg, "levels": levels}, f, indent=2)
            f.write("\n")
    return 1 if any(s["failed"] for s in levels) else 0


def _rng_str(r):
    return f"{r[0]}" if r[0] == r[1] else f"{r[0]}:{r[1]}"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Streams requests to an OpenAI-compatible server at each concurrency level in turn and "
                    "reports output tokens/s, requests/s, time to first token (TTFT), inter-token latency (ITL: "
                    "the gap between consecutive chunks that carry text) and end-to-end latency. Exit status: 0 "
                    "when every request succeeded, 1 when any failed, 2 for bad arguments.",
        epilog="example: %(prog)s --concurrency 1,4,16,64 --requests 64 --prompt-tokens 32 --max-tokens 64 "
               "--ignore-eos --json load.json")
    ap.add_argument("--base-url", metavar="URL", default="http://127.0.0.1:8080/v1",
                    help="API base URL, ending in /v1 (default: %(default)s)")
    ap.add_argument("--api-key", metavar="KEY", default="none",
                    help="bearer key, always sent; servers without auth ignore it (default: %(default)s)")
    ap.add_argument("--model", metavar="ID", help="model id (default: the first of GET /v1/models)")
    ap.add_argument("--chat", action="store_true",
                    help="POST /v1/chat/completions (one user message) instead of /v1/completions")
    ap.add_argument("--concurrency", metavar="C1,C2,...", type=parse_levels, default="1,4,16,64",
                    help="concurrency levels, run one after another (default: %(default)s)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--requests", metavar="N", type=int, default=32, help="requests per level (default: %(default)s)")
    g.add_argument("--duration", metavar="S", type=float,
                   help="seconds per level instead of --requests: new requests start until then, those in "
                        "flight finish")
    ap.add_argument("--prompt-tokens", metavar="N|LO:HI", type=parse_range, default="32",
                    help="prompt length, fixed or drawn uniformly: that many words, about one token each "
                         "(the server's usage reports the real count) (default: %(default)s)")
    ap.add_argument("--max-tokens", metavar="N|LO:HI", type=parse_range, default="64",
                    help="max_tokens, fixed or drawn uniformly (default: %(default)s)")
    ap.add_argument("--seed", metavar="S", type=int, default=0,
                    help="seed of the prompts and drawn lengths; each level is reproducible on its own "
                         "(default: %(default)s)")
    ap.add_argument("--token-ids", metavar="VOCAB", type=int,
                    help="prompts of --prompt-tokens random token ids in [0, VOCAB) instead of words (completions "
                         "only; for models without a tokenizer, whose chunks carry no text: then every chunk with "
                         "a choice counts as tokens arriving)")
    ap.add_argument("--client", choices=("auto", "openai", "http"), default="auto",
                    help="openai: the official SDK; http: the standard library's HTTP/1.1 (no packages needed); "
                         "auto: the SDK when it is installed (default: %(default)s)")
    ap.add_argument("--words-file", metavar="FILE", help="take prompt words from this text file instead of the "
                    "built-in list of common English words")
    ap.add_argument("--ignore-eos", action="store_true",
                    help="send vLLM's ignore_eos (an extra body field) so every request generates max_tokens")
    ap.add_argument("--include-usage", action=argparse.BooleanOptionalAction, default=True,
                    help="ask for stream_options.include_usage and count output tokens from usage; without it "
                         "(or if the server sends none) the chunks that carry text are counted (default: on)")
    ap.add_argument("--temperature", metavar="T", type=float, default=0.0,
                    help="sampling temperature (default: %(default)s)")
    ap.add_argument("--timeout", metavar="S", type=float, default=600.0,
                    help="per-request timeout in seconds (default: %(default)s)")
    ap.add_argument("--warmup", metavar="N", type=int, default=0,
                    help="short requests sent, not counted, before the first level (default: %(default)s)")
    ap.add_argument("--json", metavar="OUT", help="also write the configuration and every level's numbers "
                    "(times in seconds) as JSON to OUT")
    args = ap.parse_args(argv)
    if args.requests < 1:
        ap.error("--requests must be >= 1")
    if args.duration is not None and args.duration <= 0:
        ap.error("--duration must be > 0")
    if args.token_ids is not None and (args.token_ids < 1 or args.chat):
        ap.error("--token-ids takes a vocabulary size >= 1, and completions (not --chat)")
    if args.client == "openai" and not openai:
        ap.error("--client openai: the openai package is not installed")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
