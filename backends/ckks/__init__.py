"""Packed CKKS shared by the CKKS backends (`tenseal`: client-aided refresh; `lattigo`:
bootstrapping): the level-tracking engine and its dry twin, the packing, the op set, the
polynomial approximations and the backend logic both run on."""
