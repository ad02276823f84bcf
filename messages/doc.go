// Package messages is the wire contract between the MetaGuildNet controller
// and its agents: every NATS subject, every payload, their versions and their
// validation. It is the one package both sides import; nothing here does I/O.
//
// # Subjects
//
// All subjects live under the "mgn." prefix. NODE is a node name as accepted
// by [ValidNodeName]; identity is always taken from the subject, which the
// server's per-node permissions bind to the authenticated connection, never
// from a payload field.
//
//	subject                     publisher   payload            notes
//	mgn.enroll.PUBKEY           new agent   EnrollRequest      request; reply EnrollReply or ErrorReply
//	mgn.hb.NODE                 agent       Heartbeat          every interval (default 5 s)
//	mgn.sync.NODE               agent       SyncRequest        request on every (re)connect and while results wait to be settled; reply SyncReply
//	mgn.task.NODE               controller  Task               live push of one task to one node
//	mgn.ack.NODE                agent       Ack                the agent started (or refused) a task
//	mgn.res.NODE                agent       Result             one per task; kept in the agent's journal until settled
//	mgn.api.VERB                operator    API request types  admin only; reply is the matching response or ErrorReply
//	mgn.evt.KIND                controller  Event              state changes (node online/stale/offline, ...)
//	mgn.relay.keys              relay       RelayKeysRequest   request over the leaf link; reply RelayKeysReply (one page of enrolled keys)
//	mgn.relay.changed           controller  (empty)            a key was enrolled, removed or re-keyed: relays ask again
//	mgn.relay.admit             relay       RelayAdmitRequest  an agent connected to a relay with a join token: key + token HASH; reply RelayAdmitReply or ErrorReply
//
// Replies go only into the requester's own inbox: "_INBOX_N.NODE." for an
// enrolled node, "_INBOX_E.PUBKEY." while it enrolls, "_INBOX." for the
// operator. The controller serves a request only when its reply subject is
// under that prefix ([ReplyUnder]), so a request cannot steer the
// controller's answer onto another subject (a KV key, another node's
// heartbeat, the API). Each family is one subject token, so permissions can
// name a whole family and a node exactly its own inbox.
//
// # Results and settlement
//
// An agent publishes a Result on mgn.res.NODE and keeps it in its journal.
// The controller keeps the first outcome per node and task and stores
// results in batches (ResultBatch on mgn.results.TASKID, stream
// MGN_RESULTS, written by the controller only). While results wait, the
// agent syncs every few seconds. The reply lists the open tasks the node
// owes an outcome for, and is sent only once everything the controller had
// received is stored; so the agent forgets every result it had sent whose
// task is not listed, sends again the results of listed tasks, and runs
// the listed tasks it has not seen. No result id crosses the wire for this.
//
// # Encoding
//
// Payloads are JSON. Task, Result and TaskReport, which a fan-out moves once
// per node, have fast paths (fast.go) for the plain form the two sides
// write; anything else goes through encoding/json, and fuzz tests check the
// two always agree.
//
// # Operator API (mgn.api.VERB)
//
//	verb          request             reply
//	status        StatusRequest       StatusReply (the fleet view)
//	run           RunRequest          RunReply (task id and targeted nodes)
//	task.wait     TaskWaitRequest     TaskReport (one row per targeted node; paged by rows and bytes)
//	token.create  TokenCreateRequest  TokenCreateReply
//	nodes.remove  NodesRemoveRequest  NodesRemoveReply
//	nodes.set     NodesSetRequest     NodesSetReply (a node's cluster, role and labels: the operator's alone)
//	verify        VerifyRequest       VerifyReply (report id; the Report is in object store mgn_reports)
//	report.last   ReportLastRequest   VerifyReply
//	diagnose      DiagnoseRequest     DiagnoseReply (result id; the result is in object store mgn_diagnoses)
//	dashboard.login DashboardLoginRequest DashboardLoginReply (a one-time sign-in link to the web dashboard)
//
// Reports and diagnoses can be larger than one message, so they are stored
// in JetStream object stores and read by name.
//
// # Task payloads
//
// Task.Args and Result.Output carry typed payloads; both sides use these
// types:
//
//	kind      Task.Args                       Result.Output
//	ping      (none)                          PingOutput
//	facts     (none)                          Facts
//	sleep     SleepArgs (duration)            SleepOutput
//	verify    VerifyArgs (scope, layers)      VerifyOutput (one CheckResult per check)
//	diagnose  DiagnoseArgs (collectors)       DiagnoseOutput (Sections and Findings, redacted on the node)
//
// Arguments are decoded strictly with [DecodeTaskArgs] (an unknown field is
// refused) and may leave out "v", since operators type them for `controller
// run --args`. Outputs are read with [Decode] like any other payload.
//
// # Events (mgn.evt.KIND)
//
// node_state (a node went online, stale, offline or was removed) and
// layer_state (a layer's fleet status changed between verifications).
//
// # Durable state (JetStream, under the controller's data dir)
//
//	KV mgn_nodes          node name -> enrollment, attributes, facts, last seen
//	KV mgn_tokens         sha256(token) -> expiry, reusable, used (never the token)
//	KV mgn_tasks_open     task id -> task and targets, while open
//	KV mgn_tasks          task id -> task and targets, for the retention period
//	stream MGN_RESULTS    mgn.results.TASKID: ResultBatch messages written by the controller only
//	                      (batched; for each node the first stored outcome wins)
//	objects mgn_reports   verification reports (Report)
//	objects mgn_diagnoses diagnoses (DiagnoseResult)
//
// # Versions
//
// Every payload carries "v". A receiver refuses a version it does not know
// with an ErrorReply (for requests) or a Result with outcome unknown and
// reason rejected (for tasks), and counts it; it never crashes or drops other
// work. Version 1 is the only version so far.
//
// # Limits
//
// Every decoder takes a size limit (default [DefaultMaxMessageBytes]) and
// refuses larger input before parsing it. The limits both sides share (task
// and API deadlines, [APITimeout] per verb) are defined once in limits.go.
package messages
