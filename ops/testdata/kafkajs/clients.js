// What a user does with kafkajs, a second Kafka client independent of
// jobstream's, against jobstream's topics. ops/clients_test.go runs it:
//
//   node clients.js <command> '<json arguments>'
//
// and reads one JSON document from stdout; kafkajs's own logs go to stderr.
// Commands:
//   groups  {brokers, prefix, groups: {group: topic}, never: {group, topic}}
//           listGroups, describeGroups, and each group's lag from
//           fetchOffsets and fetchTopicOffsets, as a lag tool computes it.
//   history {brokers, group, topics, key}
//           consume every topic from the beginning in consumer group
//           `group` (committing as it goes) up to the end, and keep the
//           events whose key is `key`, with the partition kafkajs's
//           default (Java-compatible murmur2) partitioner picks for it.
//   bytime  {brokers, topic, ts}   fetchTopicOffsetsByTimestamp
//   reset   {brokers, group, topic, earliest}   admin.resetOffsets
//   set     {brokers, group, topic, partitions} admin.setOffsets
'use strict';

const { Kafka, Partitioners, logLevel } = require('kafkajs');

const [, , command, rawArgs] = process.argv;
const args = JSON.parse(rawArgs || '{}');

const kafka = new Kafka({
  clientId: 'jobstream-kafkajs-check',
  brokers: args.brokers,
  logLevel: logLevel.ERROR,
  logCreator: () => ({ namespace, level, log }) => {
    process.stderr.write(`kafkajs ${namespace} ${level}: ${JSON.stringify(log)}\n`);
  },
  retry: { retries: 8 },
});

// lagOf is the lag tool's arithmetic: per partition, the end offset minus
// the committed one; a partition never committed (a negative offset) is read
// from its first offset, as the workers' groups start.
function lagOf(committed, ends) {
  const byPart = new Map(committed.map((p) => [p.partition, Number(p.offset)]));
  const partitions = ends.map((e) => {
    let c = byPart.has(e.partition) ? byPart.get(e.partition) : -1;
    if (c < 0) c = Number(e.low);
    const lag = Math.max(Number(e.high) - c, 0);
    return { partition: e.partition, committed: c, end: Number(e.high), lag };
  }).sort((a, b) => a.partition - b.partition);
  return { lag: partitions.reduce((s, p) => s + p.lag, 0), partitions };
}

async function groups(admin) {
  const { groups: listed } = await admin.listGroups();
  const ours = listed.filter((g) => g.groupId.startsWith(args.prefix + '.')).map((g) => g.groupId).sort();
  const { groups: described } = await admin.describeGroups(Object.keys(args.groups));
  const out = { listed: ours, groups: {} };
  for (const [group, topic] of Object.entries(args.groups)) {
    const d = described.find((g) => g.groupId === group);
    const [offsets] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
    const ends = await admin.fetchTopicOffsets(topic);
    out.groups[group] = { state: d.state, members: d.members.length, ...lagOf(offsets.partitions, ends) };
  }
  // A group that never committed: Kafka answers -1 per partition.
  const [never] = await admin.fetchOffsets({ groupId: args.never.group, topics: [args.never.topic] });
  out.never = never.partitions.map((p) => Number(p.offset));
  return out;
}

async function history(admin) {
  const ends = {};
  const partitions = {};
  for (const topic of args.topics) {
    ends[topic] = new Map();
    const offs = await admin.fetchTopicOffsets(topic);
    partitions[topic] = offs.length;
    for (const o of offs) {
      if (Number(o.high) > Number(o.low)) ends[topic].set(o.partition, Number(o.high));
    }
  }
  const partitioner = Partitioners.DefaultPartitioner();
  const expected = {};
  for (const topic of args.topics) {
    const partitionMetadata = [...Array(partitions[topic]).keys()].map((p) => ({ partitionId: p, leader: 0 }));
    expected[topic] = partitioner({ topic, partitionMetadata, message: { key: args.key } });
  }
  const remaining = () => Object.values(ends).reduce((n, m) => n + m.size, 0);
  const events = [];
  const consumer = kafka.consumer({ groupId: args.group, sessionTimeout: 10000, heartbeatInterval: 1000 });
  await consumer.connect();
  await consumer.subscribe({ topics: args.topics, fromBeginning: true });
  await new Promise((resolve, reject) => {
    if (remaining() === 0) resolve();
    consumer.run({
      eachMessage: async ({ topic, partition, message }) => {
        if (message.key && message.key.toString() === args.key) {
          events.push({ topic, partition, offset: Number(message.offset), timestamp: Number(message.timestamp),
            value: message.value ? JSON.parse(message.value.toString()) : null });
        }
        const end = ends[topic].get(partition);
        if (end !== undefined && Number(message.offset) + 1 >= end) {
          ends[topic].delete(partition);
          if (remaining() === 0) resolve();
        }
      },
    }).catch(reject);
  });
  await consumer.disconnect(); // commits what it consumed
  const lag = {};
  for (const topic of args.topics) {
    const [offsets] = await admin.fetchOffsets({ groupId: args.group, topics: [topic] });
    lag[topic] = lagOf(offsets.partitions, await admin.fetchTopicOffsets(topic)).lag;
  }
  return { events, expected, lag };
}

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  try {
    switch (command) {
      case 'groups':
        return await groups(admin);
      case 'history':
        return await history(admin);
      case 'bytime':
        return await admin.fetchTopicOffsetsByTimestamp(args.topic, args.ts);
      case 'reset':
        await admin.resetOffsets({ groupId: args.group, topic: args.topic, earliest: args.earliest });
        return (await admin.fetchOffsets({ groupId: args.group, topics: [args.topic] }))[0].partitions;
      case 'set':
        await admin.setOffsets({ groupId: args.group, topic: args.topic, partitions: args.partitions });
        return (await admin.fetchOffsets({ groupId: args.group, topics: [args.topic] }))[0].partitions;
      default:
        throw new Error(`unknown command ${command}`);
    }
  } finally {
    await admin.disconnect();
  }
}

main().then(
  (out) => process.stdout.write(JSON.stringify(out) + '\n'),
  (err) => {
    process.stderr.write(`${command}: ${err.name}: ${err.message}\n`);
    process.exit(1);
  },
);
