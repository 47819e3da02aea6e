"""Engram head table sizes (ENGRAM.md section 4) in plain Python, shared by the
tools that write Engram checkpoints (gen_checkpoint.py, train/engram_torch.py).
tools/make_hash_golden.py keeps its own copy on purpose: it is the independent
reference the C code is tested against."""


def is_prime(n):
    """Deterministic Miller-Rabin, exact for all 64-bit n."""
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def head_primes(vocab_sizes, n_heads, layer_ids):
    """{layer_id: [prime per head, order-major]}: the smallest unseen primes
    above each order's start, one `seen` set shared by all layers."""
    seen, out = set(), {}
    for lid in layer_ids:
        primes = []
        for v in vocab_sizes:
            start = v - 1
            for _ in range(n_heads):
                p = start + 1
                while not is_prime(p) or p in seen:
                    p += 1
                seen.add(p)
                primes.append(p)
                start = p
        out[lid] = primes
    return out
