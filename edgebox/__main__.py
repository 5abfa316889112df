from edgebox.cli import app

app()
