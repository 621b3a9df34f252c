"""Writing models and directions out of the toolkit (the streaming folder export lives in ``folder``)."""
