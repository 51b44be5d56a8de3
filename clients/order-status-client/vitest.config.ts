// Vitest settings for the client package: Node environment, no DOM needed since the hub
// connection is always a fake in unit tests.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
    // One worker keeps the run light on the 2-core CI machine; the suite is small.
    pool: "threads",
    maxWorkers: 1,
  },
});
