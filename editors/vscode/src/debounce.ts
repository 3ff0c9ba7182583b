// Query-as-you-type: wait for a pause in typing, run the latest query, drop stale answers.

export type Runner<T> = (query: string, signal: AbortSignal) => Promise<T>;

export interface Sink<T> {
  busy(on: boolean): void;
  result(query: string, value: T): void;
  error(query: string, err: unknown): void;
}

export class LatestQuery<T> {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private inFlight: AbortController | undefined;
  private generation = 0;

  constructor(
    private readonly delayMs: number,
    private readonly run: Runner<T>,
    private readonly sink: Sink<T>,
  ) {}

  /** A new query text: restart the quiet period and cancel the request in flight. */
  update(query: string): void {
    this.cancel();
    const generation = ++this.generation;
    this.timer = setTimeout(() => void this.fire(query, generation), this.delayMs);
  }

  /** Cancel the pending timer and the request in flight. */
  cancel(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.inFlight !== undefined) {
      this.inFlight.abort();
      this.inFlight = undefined;
      this.sink.busy(false);
    }
    this.generation++;
  }

  private async fire(query: string, generation: number): Promise<void> {
    this.timer = undefined;
    const controller = new AbortController();
    this.inFlight = controller;
    this.sink.busy(true);
    try {
      const value = await this.run(query, controller.signal);
      if (generation === this.generation) {
        this.sink.result(query, value);
      }
    } catch (err) {
      if (generation === this.generation) {
        this.sink.error(query, err);
      }
    } finally {
      if (generation === this.generation) {
        this.inFlight = undefined;
        this.sink.busy(false);
      }
    }
  }
}
