// Package kafkaconn is how jobstream reaches Kafka: the bootstrap brokers
// with their SASL and TLS (Broker, built from Auth), the kafka-go dialer,
// transport and admin client that speak them, a start-up Ping that turns
// a failure into one sentence naming the fix, and EnsureTopics.
//
// It sits below cdc and consumers and above schema, whose topic names it
// checks; schema itself holds no network code. A Broker is a plain value:
// copying it shares its TLS config and SASL mechanism, and it holds no
// connection of its own, so the libraries and the commands build their
// clients from one Broker the caller set up once.
package kafkaconn
