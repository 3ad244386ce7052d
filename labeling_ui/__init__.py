

import os

# Nothing here reaches the network: Gradio's analytics off, the Hugging Face hub offline (set before
# any module of the package imports gradio).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
