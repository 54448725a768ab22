"""The app side: settings checked where a request enters, sessions, where races run (in process or
on ZeroGPU), the views and the page. `app.py` starts it."""
