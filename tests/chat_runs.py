"""What a loss mask supervises, as text: shared by the chat tests."""

import numpy as np


def supervised_runs(tok, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """Decoded text of each maximal run of supervised tokens."""
    runs, current = [], []
    for token, flag in zip(ids.tolist(), mask.tolist()):
        if flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False) for r in runs]
