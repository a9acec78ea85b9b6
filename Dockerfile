# The jobstream image used by compose.yaml: one static binary, the example
# steps and the pipeline file under /app (the workers' working folder), and
# python3 for the serve-mode example model server.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -o /out/jobstream ./ops/jobstream

FROM debian:bookworm-slim
# CA certificates, so TLS to Postgres, Kafka or a step service signed by a
# public CA verifies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3-minimal \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/jobstream /usr/local/bin/jobstream
WORKDIR /app
COPY ops/steps ops/steps
COPY ops/pipeline.json ops/pipeline.json
ENTRYPOINT ["jobstream"]
