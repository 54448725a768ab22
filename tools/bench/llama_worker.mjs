// The `llama` baseline's worker: llama.cpp (through node-llama-cpp's prebuilt CPU build) answering greedy
// generation requests, one JSON line in and one out, so tools/bench/llama.py can time it between our
// methods. Arguments: the node-llama-cpp install folder, the GGUF file, the thread count.
// First line out: {"ready", "build", "backend", "threads"}; then per request {"ids", "seconds"}, where the
// seconds cover the prompt's evaluation and every new token, as tools.bench times its own methods.
import {join} from "node:path";
import {pathToFileURL} from "node:url";
import {createInterface} from "node:readline";

const [folder, modelPath, threadsText] = process.argv.slice(2);
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(join(folder, "node_modules/node-llama-cpp/dist/index.js")));
const logs = [];  // llama.cpp names the CPU backend it loaded (its instruction set) only in its log
const llama = await getLlama({gpu: false, logLevel: LlamaLogLevel.debug, logger: (level, message) => logs.push(message)});
const model = await llama.loadModel({modelPath});
const threads = Number(threadsText);
const context = await model.createContext({contextSize: 4096, threads});
const sequence = context.getSequence();
const loaded = logs.map(line => line.match(/loaded CPU backend from .*\/(libggml-cpu[^/]*)\.so/)).find(Boolean);
console.log(JSON.stringify({ready: true, build: `${llama.llamaCppRelease.repo} ${llama.llamaCppRelease.release}`,
                            backend: loaded ? loaded[1] : "unknown", threads: context.currentThreads ?? threads}));

for await (const line of createInterface({input: process.stdin})) {
    const request = JSON.parse(line);
    const eos = new Set(request.eos);
    await sequence.clearHistory();
    const ids = [];
    const begin = performance.now();
    // Greedy (temperature 0); the end-of-generation token is yielded so that it counts, as in our decoders.
    for await (const token of sequence.evaluate(request.ids, {temperature: 0, yieldEogToken: true})) {
        ids.push(token);
        if (eos.has(token) || ids.length >= request.max_new_tokens) break;
    }
    const seconds = (performance.now() - begin) / 1000;
    console.log(JSON.stringify({ids, seconds}));
}
