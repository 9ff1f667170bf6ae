FROM python:3.11-slim
WORKDIR /app
COPY . .
# The production install: the project and its pinned dependencies, none of the embedded stack's extras.
RUN pip install --no-cache-dir -c requirements.lock .
CMD ["python", "worker.py"]
