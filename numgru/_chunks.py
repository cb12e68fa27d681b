"""How the compiled kernels split a sequence into chunks of steps.

The backward pass of a layer goes through the steps in chunks, last chunk
first: the recurrence over one chunk, then that chunk's terms of the weight
gradients. Gate gradients and the other work arrays are held for one chunk
at a time instead of for the whole sequence. Both compiled backends use the
same chunks. The Numba forward pass also computes the input projection one
chunk at a time.
"""

#: Fewest rows (samples x steps) per chunk of steps.
CHUNK_ROWS = 256
#: Chunks are kept small: at most about ``T / CHUNK_PARTS`` steps each.
CHUNK_PARTS = 8


def chunk_steps(B, T):
    """Steps per chunk for a batch of ``B`` samples of ``T`` steps.

    About an eighth of the sequence, but at least ``CHUNK_ROWS`` rows. It
    depends on the shape only, never on the thread count.
    """
    return max(1, min(T, max(-(-T // CHUNK_PARTS), -(-CHUNK_ROWS // B))))


def step_chunks(max_length, steps):
    """Processing-step ranges ``(s_lo, s_hi)`` of the chunks, last first."""
    return [(max(0, s_hi - steps), s_hi)
            for s_hi in range(int(max_length), 0, -int(steps))]
