"""Dashboard pages (run by st.navigation in app.py) and their shared helpers (_state.py)."""
