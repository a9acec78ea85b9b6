# The jobstream image used by compose.yaml: one static binary plus the example step.
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
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/jobstream /usr/local/bin/jobstream
COPY ops/steps/echo.sh /usr/local/bin/jobstream-echo-step
ENTRYPOINT ["jobstream"]
