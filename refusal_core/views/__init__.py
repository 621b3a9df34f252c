"""What an intervention does, seen: the manifold moving under it (``shift``), refusal traced
token by token (``trace``), two models' refusal geometry compared (``compare``), and a
self-contained HTML report of a session's results (``report``)."""
