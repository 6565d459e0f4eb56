"""SEAL's CKKS (through TenSEAL's `sealapi`) as an `Engine`, and SEAL's errors turned into fixes.

Why not `ts.CKKSVector`: it has no rotation, and the packed products (see `backends.ckks.tensor`)
need explicit rotations by chosen steps, with Galois keys for exactly those steps.
"""

from __future__ import annotations

import numpy as np

from backends.ckks.engine import Engine
from backends.tenseal.params import Params


class CkksError(RuntimeError):
    """A SEAL failure turned into a message naming the parameter to change."""


SEAL_HINTS = {
    "scale out of bounds": "the scale outgrew the modulus: lower backend.scale_bits or raise coeff_mod_bit_sizes[0]",
    "end of modulus switching chain": "the modulus chain ran out: add primes to backend.coeff_mod_bit_sizes "
    "or leave it unset (depth-chosen, with client-aided refresh)",
    "encoded values are too large": "a value exceeds the scale's headroom: raise backend.coeff_mod_bit_sizes[0] "
    "over backend.scale_bits, or narrow the approximation ranges",
    "not valid for encryption parameters": "parameters rejected by SEAL: check backend.poly_modulus_degree "
    "and backend.coeff_mod_bit_sizes",
}


def translate(exc: Exception) -> Exception:
    """A clear CkksError for SEAL's known messages; the exception itself otherwise."""
    text = str(exc)
    for needle, hint in SEAL_HINTS.items():
        if needle in text:
            return CkksError(f"SEAL: {text.strip()} -> {hint}")
    return exc


def galois_elt(step: int, n: int) -> int:
    """SEAL's Galois element for a left rotation by `step` (right if negative) in ring degree n."""
    step = n // 2 - (-step) if step < 0 else step
    return pow(3, step, 2 * n)


class SealEngine(Engine):
    """SEAL CKKS, fresh ciphertexts at scale 2^scale_bits. Scales are tracked exactly: plaintext
    factors are encoded at the scale of the prime the next rescale drops (the product keeps its
    scale), ciphertext products take scale a * b / q. Forcing 2^scale_bits after each rescale
    instead (as TenSEAL does) misstates the value by |q - 2^40| / q ~ 1e-7 per product, which
    Goldschmidt's and exp's repeated squarings amplify to ~1e-2."""

    def __init__(self, params: Params, steps: set[int], allow_insecure: bool):
        super().__init__(params)
        import tenseal.sealapi as sa

        self.sa = sa
        enc = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
        enc.set_poly_modulus_degree(params.poly_modulus_degree)
        enc.set_coeff_modulus(sa.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)))
        level = sa.SEC_LEVEL_TYPE.NONE if allow_insecure else sa.SEC_LEVEL_TYPE.TC128
        self.ctx = sa.SEALContext(enc, True, level)
        if not self.ctx.parameters_set():
            raise translate(ValueError(f"{self.ctx.parameters_error_message()}: not valid for encryption parameters"))
        keygen = sa.KeyGenerator(self.ctx)
        self.public_key, self.relin_keys, self.galois_keys = sa.PublicKey(), sa.RelinKeys(), sa.GaloisKeys()
        keygen.create_public_key(self.public_key)
        keygen.create_relin_keys(self.relin_keys)
        if steps:  # as Galois elements: pybind picks the elements overload for all-positive lists
            n = params.poly_modulus_degree
            keygen.create_galois_keys(sorted(galois_elt(s, n) for s in steps), self.galois_keys)
        self.galois_steps = len(steps)
        self.encryptor = sa.Encryptor(self.ctx, self.public_key)
        self.decryptor = sa.Decryptor(self.ctx, keygen.secret_key())
        self.evaluator = sa.Evaluator(self.ctx)
        self.encoder = sa.CKKSEncoder(self.ctx)
        self.scale = float(2**params.scale_bits)
        self.parms, self.drop = {}, {}
        data = self.ctx.first_context_data()
        while data is not None:
            self.parms[data.chain_index()] = data.parms_id()
            self.drop[data.chain_index()] = float(data.parms().coeff_modulus()[-1].value())
            data = data.next_context_data()
        self.plain_cache: dict[tuple[object, int], object] = {}

    def preload(self, plains: dict[tuple[object, int], np.ndarray]) -> None:
        """Encode the server's plaintexts (weight diagonals, masks) once, at the levels the dry
        run used them: a deployed server does this when it loads the model."""
        for (key, level), values in plains.items():
            self.plain_cache[(key, level)] = self._encode(values, level, self.drop[level])

    def _encode(self, values, level, scale=None):
        pt = self.sa.Plaintext()
        self.encoder.encode(values.tolist(), self.parms[level], scale or self.scale, pt)
        return pt

    def _encrypt(self, values):
        ct = self.sa.Ciphertext()
        self.encryptor.encrypt(self._encode(values, self.params.levels), ct)
        return ct

    def _decrypt(self, raw):
        pt = self.sa.Plaintext()
        self.decryptor.decrypt(raw, pt)
        return np.array(self.encoder.decode_double(pt))

    def _out(self, fn, *args):
        """SEAL's evaluator writes into a destination ciphertext."""
        out = self.sa.Ciphertext()
        fn(*args, out)
        return out

    def _mod_switch(self, raw, level):
        return self._out(self.evaluator.mod_switch_to, raw, self.parms[level])

    def _add(self, a, b):
        return self._combine(a, b, self.evaluator.add, self.evaluator.sub)

    def _sub(self, a, b):
        return self._combine(a, b, self.evaluator.sub, self.evaluator.add)

    def _combine(self, a, b, op, inverse):
        """SEAL adds only equal scales: a copy of b (negated) takes a's scale, a relative error of
        |1 - a.scale / b.scale| (~1e-7), paid only where two histories meet."""
        if a.scale == b.scale:
            return self._out(op, a, b)
        neg = self._out(self.evaluator.negate, b)
        neg.scale = a.scale
        return self._out(inverse, a, neg)

    def _add_plain(self, a, values, level):
        return self._out(self.evaluator.add_plain, a, self._encode(values, level, a.scale))

    def _rescaled(self, ct):
        self.evaluator.rescale_to_next_inplace(ct)
        return ct

    def _plain(self, values, level, key):
        pt = self.plain_cache.get((key, level)) if key is not None else None
        if pt is None:
            pt = self._encode(values, level, self.drop[level])
            if key is not None:
                self.plain_cache[(key, level)] = pt
        return pt

    def _dot_plain(self, raws, vectors, level, keys):
        ev, acc, scale = self.evaluator, None, raws[0].scale
        for raw, values, key in zip(raws, vectors, keys, strict=True):
            if raw.scale == scale:
                pt = self._plain(values, level, key)
            else:  # bring every term to the first one's scale
                pt = self._encode(values, level, self.drop[level] * scale / raw.scale)
            term = self._out(ev.multiply_plain, raw, pt)
            if acc is None:
                acc = term
            else:
                ev.add_inplace(acc, term)
        return self._rescaled(acc)

    def _mul(self, a, b, level):
        out = self._out(self.evaluator.multiply, a, b)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        return self._rescaled(out)

    def _rotate(self, a, steps):
        return self._out(self.evaluator.rotate_vector, a, steps, self.galois_keys)
