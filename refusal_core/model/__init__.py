"""The model: loading from a spec string (``loading``), the one table of model families
and the model lock (``families``), the forward-pass steps every caller shares
(``forward``) and identities of the weights (``fingerprint``)."""
