from emotionclip.cli import app

app()
